"""coordgan_generator on the python backend: generator.onnx (w_struct, w_texture or z codes -> image,
corr_map) through the runtime's ONNX Runtime backend, one run per dynamic batch."""

from triton_models.models.base import OnnxModel


class TritonPythonModel(OnnxModel):
    pass
