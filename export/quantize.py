"""int8 encoder export (`coordgan export onnx --int8`): the warping network's hidden layer in int8.

That one Gemm, (N*H*W, hidden) x (hidden, hidden), is about three quarters of the encoder graph's
arithmetic at celeba-128 (8.6 of 11 GFLOP a frame); ONNX Runtime's CPU kernels run it in int8 about
1.8x faster on AVX2. Nothing else is quantized: each further layer in int8 changed more mask pixels
on a trained model than it saved time (BENCHMARKS.md), and w_struct / w_texture stay exact.

Static quantization (QDQ): per-output-channel int8 weights in a 7-bit range (AVX2 without VNNI
multiplies u8 x s8 pairs into int16 and would saturate on the full range; with it the integer sums
are exact on every CPU, so results do not depend on the machine), uint8 activations whose range is
calibrated once, MinMax, on images the checkpoint's own generator draws - the images its encoder
was trained to invert. A fixed range keeps each frame's result independent of the batch it is in
(dynamic quantization would not).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError

CALIBRATION_IMAGES = 64
CALIBRATION_SEED = 0


def warp_hidden_layer(model) -> tuple[str, str]:
    """Names of the warping network's hidden Gemm and its Relu: the graph ends Gemm -> Relu -> Gemm -> Tanh."""
    producer = {out: node for node in model.graph.node for out in node.output}
    try:
        tanh = next(n for n in model.graph.node if n.op_type == "Tanh")
        head = producer[tanh.input[0]]
        relu = producer[head.input[0]]
        hidden = producer[relu.input[0]]
    except (StopIteration, KeyError):
        hidden = head = relu = None
    if not (head and relu and hidden and (head.op_type, relu.op_type, hidden.op_type) == ("Gemm", "Relu", "Gemm")):
        raise CoordGANError("The encoder graph does not end in the warping network's Gemm -> Relu -> Gemm -> Tanh, "
                            "so --int8 cannot find the layer it quantizes.")
    return hidden.name, relu.name


def generator_images(generator, style_dim: int, count: int = CALIBRATION_IMAGES,
                     seed: int = CALIBRATION_SEED) -> np.ndarray:
    """(count, 3, H, W) float32 images in [-1, 1] from the generator (constant noise)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    z_texture, z_structure = (torch.randn(count, style_dim, generator=gen) for _ in range(2))
    with torch.no_grad():
        images = [generator.eval()(t, s, noise_mode="const")[0]
                  for t, s in zip(z_texture.split(8), z_structure.split(8))]
    return torch.cat(images).clamp(-1, 1).numpy().astype(np.float32)


def as_encoder_input(images: np.ndarray, uint8_input: bool) -> np.ndarray:
    """[-1, 1] NCHW images in the export's input format (uint8 NHWC frames for --uint8-input)."""
    if not uint8_input:
        return images
    return np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def quantize_warp(model, calibration: np.ndarray, input_name: str):
    """The float32 encoder ModelProto with its warping network's hidden Gemm in int8 (QDQ)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 8] for i in range(0, len(calibration), 8))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    nodes = list(warp_hidden_layer(model))
    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    # The quantizer re-infers shapes after rewriting the graph; exporter shapes left in value_info
    # then clash with its transposed weights, so it starts from none.
    del float_model.graph.value_info[:]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run its own pre-processing is not for this graph
    try:
        with tempfile.TemporaryDirectory(prefix="coordgan-int8-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            onnx.save(float_model, src)
            # The Relu with it: its output range (>= 0) is the Gemm's uint8 range, twice as fine as the
            # Gemm output's own; ONNX Runtime fuses the pair into one integer kernel either way.
            quantize_static(str(src), str(dst), Batches(), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                            op_types_to_quantize=["Gemm", "Relu"], per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return onnx.load(str(dst))
    finally:
        root.setLevel(level)
