"""Reduced-precision ONNX models with float32 I/O.

Weights and activations go to float16 (or bfloat16 for TensorRT 11 builds); the graph inputs and
outputs stay float32 (Casts at the boundary), so callers feed and read the same arrays as for the
fp32 model. Numerically sensitive ops run in float32:
- the demodulation's rsqrt and the pixel norm (Sqrt, Reciprocal, ReduceMean/ReduceSum, Pow): a sum of
  squares over 512 channels and its inverse square root lose most of their precision in fp16;
- tanh/sin of the correspondence map and its Fourier features: the map is the product of the whole
  pipeline and its error is what the lookup sees.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graph_tools import topological_sort
from runtime.errors import CoordGANError

BF16_OPSET = 22
FP32_OPS = ("Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "Pow", "Tanh", "Sin")


def _converter():
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        return convert_float_to_float16
    except ImportError:
        pass
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
        return convert_float_to_float16
    except ImportError:
        raise CoordGANError("Half-precision export needs onnxruntime (its transformers tools) or "
                            "onnxconverter-common: pip install onnxruntime.") from None


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 model -> float16 model with float32 inputs/outputs and FP32_OPS kept in float32."""
    convert = _converter()
    half = convert(model, keep_io_types=True, op_block_list=list(FP32_OPS), disable_shape_infer=False)
    _dedupe_nodes(half)
    _drop_redundant_casts(half)
    topological_sort(half)
    return half


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same as `to_float16`, in bfloat16: for strongly typed TensorRT 11 builds with --bf16.

    Opset 22 is the first whose Conv, Gemm, etc. accept bfloat16, so the model is converted to it.
    """
    import ml_dtypes
    from onnx import version_converter

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < BF16_OPSET:
        model = version_converter.convert_version(model, BF16_OPSET)
    half = to_float16(model)
    graph = half.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(init).astype(np.float32).astype(ml_dtypes.bfloat16)
            graph.initializer[i].CopyFrom(_bf16_tensor(arr, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                arr = numpy_helper.to_array(attr.t).astype(np.float32).astype(ml_dtypes.bfloat16)
                attr.t.CopyFrom(_bf16_tensor(arr, attr.t.name))
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(half)


def _bf16_tensor(arr, name: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, arr.view(np.uint16).tobytes(), raw=True)
    return tensor


def _dedupe_nodes(model: onnx.ModelProto) -> None:
    """Drop repeated identical nodes: the converter inserts one Cast per reader of a weight shared by
    several fp32 ops (e.g. a constant of every demodulation), all with the same output name, which
    makes the graph invalid (an SSA name defined twice)."""
    seen: dict[str, bytes] = {}
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if node.output and all(seen.get(o) == key for o in node.output):
            continue
        for o in node.output:
            if o in seen and seen[o] != key:
                raise ValueError(f"two different nodes define {o!r} after float16 conversion")
            seen[o] = key
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _drop_redundant_casts(model: onnx.ModelProto) -> None:
    """Remove Cast(->fp16) immediately undone by Cast(->fp32), which the converter leaves between two
    fp32 ops (each Cast is a pass over the tensor, and the round trip loses precision)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    protected = {o.name for o in graph.output}
    undo = [n for n in graph.node
            if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT and n.output[0] not in protected
            and (p := producers.get(n.input[0])) is not None
            and p.op_type == "Cast" and _cast_to(p) == TensorProto.FLOAT16]
    if not undo:
        return
    rename = {n.output[0]: producers[n.input[0]].input[0] for n in undo}
    drop = {id(n) for n in undo}
    kept = [n for n in graph.node if id(n) not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    used = {i for n in kept for i in n.input} | protected
    kept = [n for n in kept if not (n.op_type == "Cast" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)


def _cast_to(node) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None
