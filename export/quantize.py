"""int8 encoder export (`coordgan export onnx --int8`): the warping network's hidden layer in int8.

That one Gemm, (N*H*W, hidden) x (hidden, hidden), is about three quarters of the encoder graph's
arithmetic at celeba-128 (8.6 of 11 GFLOP a frame); ONNX Runtime's CPU kernels run it in int8 about
1.8x faster on AVX2. Nothing else is quantized: quantizing the encoder's own layers too changed about
three times the mask pixels on a trained model (BENCHMARKS.md), and w_struct / w_texture stay exact.

Static quantization (QDQ): per-output-channel int8 weights in a 7-bit range (AVX2 without VNNI
multiplies u8 x s8 pairs into int16 and would saturate on the full range), uint8 activations with a range
calibrated once (MinMax). A fixed range keeps each frame's result independent of the batch it is in
(dynamic quantization would not).

The warping network sees the image only through w_struct, so it is calibrated as the subgraph
w_struct -> corr_map on structure codes, and spliced back: codes the checkpoint's mapping network
draws (what its encoder was trained to reproduce), or the encoder's codes for the user's footage
(`--calibration`). Running the whole encoder on generated images instead took minutes at celeba-128
on the CPU, nearly all of it drawing the images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError

CALIBRATION_CODES = 64
CALIBRATION_SEED = 0
CALIBRATION_FRAMES = 64


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


def generator_codes(generator, style_dim: int, count: int = CALIBRATION_CODES,
                    seed: int = CALIBRATION_SEED) -> np.ndarray:
    """(count, D) structure codes from the generator's mapping network."""
    import torch

    z = torch.randn(count, style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.eval().map_structure(z).numpy().astype(np.float32)


def footage_codes(model, path, size: int, uint8_input: bool, count: int = CALIBRATION_FRAMES) -> np.ndarray:
    """(n <= count, D) structure codes the float encoder `model` gives for frames of a video or frame
    folder, resized as `propagate` resizes them: spread evenly over it where its length is known, else
    its first `count`."""
    import onnxruntime as ort

    from runtime.io.video import open_frames
    from runtime.propagation.preprocess import resize_frames, to_unit_range

    source = open_frames(path)
    wanted = (set(np.linspace(0, source.count - 1, min(source.count, count)).round().astype(int).tolist())
              if source.count else set(range(count)))
    picked = []
    for index, _, frame in source.frames():
        if index in wanted:
            picked.append(resize_frames(frame, size)[0])
            if len(picked) == len(wanted):
                break
    if not picked:
        raise CoordGANError(f"{path} has no frames to calibrate --int8 on.")
    frames = np.stack(picked)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = frames if uint8_input else to_unit_range(frames)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(["w_struct"], {name: feed[i:i + 8]})[0] for i in range(0, len(feed), 8)])


def calibration_batches(data: np.ndarray, input_name: str):
    """ONNX Runtime's calibration reader over `data` in batches of 8, fed as `input_name`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(data[i:i + 8] for i in range(0, len(data), 8))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Batches()


def quantize_static_qdq(model, reader, op_types: list[str], nodes: list[str] | None = None):
    """`model` (a float32 ModelProto) with `op_types` (restricted to `nodes` when given) in int8 by this
    module's scheme, calibrated on what `reader` (calibration_batches) feeds."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    # The quantizer re-infers shapes after rewriting the graph; exporter shapes left in value_info then
    # clash with its transposed weights, so it starts from none.
    del float_model.graph.value_info[:]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run its own pre-processing is not for this graph
    try:
        with tempfile.TemporaryDirectory(prefix="coordgan-int8-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            onnx.save(float_model, src)
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                            nodes_to_quantize=nodes, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return onnx.load(str(dst))
    finally:
        root.setLevel(level)


def quantize_warp(model, codes: np.ndarray):
    """The float32 encoder ModelProto with its warping network's hidden Gemm (and Relu) in int8 (QDQ),
    calibrated on the structure codes `codes` (N, D)."""
    from onnx.utils import Extractor

    warp = Extractor(model).extract_model(["w_struct"], ["corr_map"])
    # The Relu with the Gemm: its output range (>= 0) becomes the Gemm's uint8 range, twice as fine as
    # the Gemm output's own; ONNX Runtime fuses the pair into one integer kernel.
    quantized = quantize_static_qdq(warp, calibration_batches(codes, "w_struct"), ["Gemm", "Relu"],
                                    list(warp_hidden_layer(model)))
    return _splice(model, warp, quantized)


def _splice(model, part, replacement):
    """`model` with the nodes of its extracted subgraph `part` replaced by `replacement`'s (same outputs)."""
    import onnx

    from export.graph_tools import topological_sort

    replaced = {o for n in part.graph.node for o in n.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend([n for n in model.graph.node if not replaced & set(n.output)] + list(replacement.graph.node))
    used = {i for n in out.graph.node for i in n.input}
    produced = {o for n in out.graph.node for o in n.output}  # e.g. a float bias now a DequantizeLinear's output
    inits = {i.name: i for i in list(model.graph.initializer) + list(replacement.graph.initializer)
             if i.name in used and i.name not in produced}
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits.values())
    del out.graph.value_info[:]  # the float graph's shapes no longer describe the rewritten part
    topological_sort(out)
    mine = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    theirs = {o.domain or "ai.onnx": o.version for o in replacement.opset_import}
    if theirs.get("ai.onnx", mine.get("ai.onnx")) != mine.get("ai.onnx"):  # int8 QDQ never needs it at >= 18
        raise CoordGANError(f"The int8 quantizer moved the warping network to opset {theirs['ai.onnx']}, the rest of "
                            f"the encoder is at {mine.get('ai.onnx')}; export with --opset {theirs['ai.onnx']}.")
    out.opset_import.extend(o for o in replacement.opset_import if (o.domain or "ai.onnx") not in mine)
    onnx.checker.check_model(out)  # also with --no-verify, a splice that broke the graph stops here
    return out
