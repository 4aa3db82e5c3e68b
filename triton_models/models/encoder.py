"""coordgan_encoder on the python backend: encoder.onnx (frames -> corr_map, w_struct, w_texture)
through the runtime's ONNX Runtime backend, one run per dynamic batch."""

from triton_models.models.base import OnnxModel


class TritonPythonModel(OnnxModel):
    pass
