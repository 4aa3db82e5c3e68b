"""The correspondence lookup as an ONNX graph of one custom-domain node, for TensorRT.

    coordgan::CorrLookup(query, ref_maps, ref_probs) -> (probs, labels)    attributes tau, mode, k

TensorRT's ONNX parser resolves an op it does not know to the plugin registered under the node's
op type, in the namespace named by the `plugin_namespace` attribute: here the `coordgan::CorrLookup`
plugin of export/plugin/trt_plugin.py, whose kernel the engine then carries. The class count C
is fixed in the graph (it picks the kernel's instantiation); batch, reference count and the
spatial sizes stay dynamic. ONNX Runtime cannot run the node: its numerics are the kernel's,
tested against the reference in tests/test_lookup_cuda.py.
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write
from runtime.lookup.spec import MAX_CLASSES, MAX_TOPK, LookupParams

DOMAIN = "coordgan"
OP = "CorrLookup"
PLUGIN_VERSION = "1"


def lookup_model(classes: int, *, tau: float = 0.01, mode: str = "soft", k: int = 0, fp16: bool = False):
    """ONNX ModelProto: query (N,2,Hq,Wq), ref_maps (N,R,2,Hk,Wk), ref_probs (N,R,C,Hk,Wk) -> probs, labels."""
    from onnx import TensorProto, helper

    if not 1 <= classes <= MAX_CLASSES:
        raise CoordGANError(f"The lookup kernel takes 1 to {MAX_CLASSES} classes, not {classes}.")
    params = LookupParams(tau=tau, mode=mode, k=k if k or mode == "topk" else None)  # k 0: unset
    if params.mode == "topk" and params.k > MAX_TOPK:
        raise CoordGANError(f"topk keeps 1 to {MAX_TOPK} neighbours, not k = {k}.")
    k = params.k or 0
    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", dtype, ["batch", 2, "hq", "wq"]),
        helper.make_tensor_value_info("ref_maps", dtype, ["batch", "refs", 2, "hk", "wk"]),
        helper.make_tensor_value_info("ref_probs", dtype, ["batch", "refs", classes, "hk", "wk"]),
    ]
    outputs = [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes, "hq", "wq"]),
        helper.make_tensor_value_info("labels", TensorProto.INT32, ["batch", "hq", "wq"]),
    ]
    node = helper.make_node(OP, [i.name for i in inputs], [o.name for o in outputs], name="corr_lookup",
                            domain=DOMAIN, tau=float(tau), mode=mode, k=int(k),
                            plugin_namespace=DOMAIN, plugin_version=PLUGIN_VERSION)
    graph = helper.make_graph([node], "coordgan_corr_lookup", inputs, outputs)
    model = helper.make_model(graph, producer_name="coordgan-deploy",
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    helper.set_model_props(model, {"coordgan.op": f"{DOMAIN}::{OP}", "coordgan.tau": str(tau),
                                   "coordgan.mode": mode, "coordgan.k": str(k), "coordgan.classes": str(classes)})
    return model


def write_lookup_model(path, classes: int, *, tau: float = 0.01, mode: str = "soft", k: int = 0,
                       fp16: bool = False, overwrite: bool = False) -> Path:
    """Check and write the lookup graph atomically."""
    import onnx

    path = Path(path)
    if path.exists() and not overwrite:
        raise CoordGANError(f"{path} exists; pass --overwrite to replace it.")
    if not path.parent.is_dir():
        raise CoordGANError(f"Cannot write {path}: {path.parent} is not a directory.")
    model = lookup_model(classes, tau=tau, mode=mode, k=k, fp16=fp16)
    onnx.checker.check_model(model, full_check=False)  # custom domains have no schema to fully check
    with atomic_write(path) as f:  # its refusals (a WriteError) name the path already
        f.write(model.SerializeToString())
    return path
