"""The bottom layer: inference without PyTorch (docs/DESIGN.md, "Layers").

    errors.py, fileio.py   the one user-error type; atomic writes, hashes, the cache folder
    cuda_driver.py         cuda-python plumbing shared by the GPU lookup and TensorRT
    io/                    frames in (video, folders, images), masks in and out
    lookup/                the correspondence lookup: spec, dense / sparse / CUDA paths, one dispatch
    backends/              ONNX Runtime, TensorRT, Triton behind one Backend interface
    propagation/           frames -> correspondence maps -> masks, one sequence at a time
    davis/                 the DAVIS layout and its J / F measures
    bench/                 timing, runtime-backend runners, reports, the Triton load test

Imports nothing of ours above it (coordgan, export, triton_models) and never torch.
"""
