"""Inspection and shaping passes on ONNX graphs: constant folding, control-flow and fold checks,
I/O descriptions, metadata.

Torch-free (onnx + onnxscript only), so the verify path and the TensorRT builder can use it on a
machine that never saw PyTorch.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
from onnx import TensorProto

BATCH = "batch"
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
# Constant subgraphs whose result has more elements than this stay in the graph on purpose: folding
# them would grow the file by more than they cost to compute (e.g. the warp network's per-pixel
# table of the canonical grid: 128*128*512 floats = 32 MiB for 2 MACs per element).
FOLD_OUTPUT_LIMIT = 1 << 20
# DequantizeLinear of a constant is an int8 weight of a QDQ graph (--int8): folding it would undo the
# quantization that ONNX Runtime fuses into its integer kernels.
_NOT_FOLDABLE = frozenset({"Constant", "RandomNormal", "RandomUniform", "RandomNormalLike",
                           "RandomUniformLike", "Multinomial", "Bernoulli", "DequantizeLinear"})

DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
               TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.INT32: "int32",
               TensorProto.INT64: "int64", TensorProto.BOOL: "bool", TensorProto.DOUBLE: "float64"}


def fold_constants(model: onnx.ModelProto, output_limit: int = FOLD_OUTPUT_LIMIT) -> onnx.ModelProto:
    """Fold every constant subgraph whose result is at most `output_limit` elements.

    Two passes. The onnxscript optimizer folds node by node, but only where the result does not
    grow the file: it stops at a large intermediate that is shared, e.g. W**2 of a weight that the
    convolution also reads, so the demodulation's sum_k(W**2) (small) would stay run-time work on
    every call. `_fold_frontier` then evaluates such chains whole and keeps only their small results.
    """
    import onnxscript.optimizer

    model = onnxscript.optimizer.optimize(model, num_iterations=3, input_size_limit=1 << 31,
                                          output_size_limit=output_limit)
    return _fold_frontier(model, output_limit)


def _sizes(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            sizes[vi.name] = int(np.prod([d.dim_value for d in tt.shape.dim]))
    return sizes


def _fold_targets(model: onnx.ModelProto, limit: int, sizes: dict[str, int]):
    """Outputs of small constant nodes that a run-time (or kept-large constant) node reads.

    Returns (targets, foldable nodes, kept-large nodes). A small constant read only by other small
    constant nodes is not a target: it disappears when its readers are folded.
    """
    foldable = [n for n, _ in foldable_nodes(model, sizes)]
    small = {id(n) for n in foldable if all(sizes.get(o, limit + 1) <= limit for o in n.output)}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    targets = [o for n in foldable if id(n) in small for o in n.output
               if o in graph_outputs or any(id(r) not in small for r in readers.get(o, []))]
    kept = [n for n in foldable if id(n) not in small]
    return targets, foldable, kept


def _fold_frontier(model: onnx.ModelProto, limit: int) -> onnx.ModelProto:
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    sizes = _sizes(model)
    targets, _, _ = _fold_targets(model, limit, sizes)
    if not targets:
        return model
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    needed, stack, used_inits = [], list(targets), set()
    seen = set()
    while stack:  # the constant ancestors of the targets
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in inits:
            used_inits.add(name)
        elif name in producer:
            node = producer[name]
            if id(node) not in {id(n) for n in needed}:
                needed.append(node)
                stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    needed.sort(key=lambda n: order[id(n)])
    sub = helper.make_model(
        helper.make_graph(needed, "fold", [], [helper.make_empty_tensor_value_info(t) for t in targets],
                          [inits[i] for i in sorted(used_inits)]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    values = ReferenceEvaluator(sub).run(None, {})
    folded = {t: numpy_helper.from_array(np.asarray(v), t) for t, v in zip(targets, values)}
    kept_nodes = [n for n in graph.node if not any(o in folded for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(folded.values())
    _remove_dead(model)
    return model


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        alive = [n for n in graph.node if any(o in read for o in n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    alive_inits = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(alive_inits)
    names = {i.name for i in alive_inits} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    alive_vi = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(alive_vi)


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder graph nodes so each comes after its producers (in place); converters that append
    Cast nodes at the end leave graphs the ONNX checker rejects."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        remaining = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input near node {remaining[0].name!r}")
        pending = remaining
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def control_flow_nodes(model: onnx.ModelProto) -> list[str]:
    """Names/types of If, Loop and Scan nodes anywhere (graph and local functions)."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return [f"{n.op_type} {n.name}" for n in nodes if n.op_type in CONTROL_FLOW_OPS]


def opset(model: onnx.ModelProto) -> int | None:
    """The model's ai.onnx opset (None if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def foldable_nodes(model: onnx.ModelProto, sizes: dict[str, int] | None = None):
    """[(node, output element count or None)] for nodes computable from initializers/constants alone."""
    sizes = _sizes(model) if sizes is None else sizes
    const = {init.name for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            const.update(node.output)
            continue
        inputs = [i for i in node.input if i]
        if inputs and node.op_type not in _NOT_FOLDABLE and all(i in const for i in inputs):
            const.update(node.output)
            found.append((node, sizes.get(node.output[0])))
    return found


def significant_unfolded(model: onnx.ModelProto, limit: int = FOLD_OUTPUT_LIMIT):
    """(should-have-been-folded, kept-on-purpose) constant nodes.

    The first list holds small constant results that run-time nodes read (a shaping bug); the
    second the constant nodes left in place because their results are large (see FOLD_OUTPUT_LIMIT).
    """
    sizes = _sizes(model)
    targets, foldable, kept = _fold_targets(model, limit, sizes)
    producer = {o: n for n in model.graph.node for o in n.output}
    bad = [(producer[t], sizes.get(t)) for t in targets]
    return bad, [(n, sizes.get(n.output[0])) for n in kept]


def name_batch_axis(model: onnx.ModelProto, name: str = BATCH) -> None:
    """Give axis 0 of every graph input and output the symbolic name `name` (in place)."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        dim0.Clear()
        dim0.dim_param = name


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node/per-value debug annotations (stack traces, FX names): they are
    not part of the model and only grow the file."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.graph.metadata_props[:]


def io_spec(value: onnx.ValueInfoProto) -> dict:
    tt = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": DTYPE_NAMES.get(tt.elem_type, str(tt.elem_type))}


def io_specs(model: onnx.ModelProto) -> dict:
    return {"inputs": [io_spec(v) for v in model.graph.input],
            "outputs": [io_spec(v) for v in model.graph.output]}


def set_metadata(model: onnx.ModelProto, entries: dict) -> None:
    """Model-level metadata_props; every value is stored as a JSON string."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))


def read_metadata(model: onnx.ModelProto) -> dict:
    out = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
