"""Mask propagation, torch-free: frames -> correspondence maps -> masks.

    model.py          CorrespondenceModel: an exported encoder + the lookup; resolve_encoder, open_model
    preprocess.py     frames resized and scaled as training prepares images
    label_resize.py   label maps between frame size and the model's grid
    memory.py         the reference memory and its resume state
    step.py           Propagator: one frame's step (annotate, or look up in the memory)
    sequence.py       propagate_sequence: a whole sequence with files, batches, resume; propagate_batch
    jobs.py           what `coordgan propagate` works on: inputs -> sequences, sharding
"""
