"""TensorRT plugin ``coordgan::CorrLookup``: the fused correspondence lookup inside an engine.

A TensorRT 10 "quickly deployable plugin" (``tensorrt.plugin``) with an ahead-of-time
implementation: at engine build time :func:`register` hands TensorRT the kernel's PTX (compiled
from ``runtime/lookup/corr_lookup.cu`` by NVRTC for the build GPU), the entry-point name, the launch geometry
and the scalar arguments as symbolic shape expressions. TensorRT embeds all of it in the engine,
so running the engine needs neither Python nor this package.

Plugin contract (the op of ``runtime.lookup.spec``):
    inputs   query (N, 2, Hq, Wq), ref_maps (N, R, 2, Hk, Wk), ref_probs (N, R, C, Hk, Wk),
             all float32 or all float16, linear layout
    outputs  probs (N, C, Hq, Wq) float32, labels (N, Hq, Wq) int32
    attrs    tau (float), mode ("soft" | "hard" | "topk"), k (int; 0 unless mode == "topk", <= 64)
N, Hq, Wq, R, Hk, Wk may be dynamic; C must be a build-time constant (it picks the instantiation).
Attributes of AOT plugins are not serialised: they are baked into the kernel name and arguments.

Usage (a TensorRT 10 release whose tensorrt.plugin has aot_impl; cuda-python for NVRTC):

    from export.plugin.trt_plugin import register
    register()                                   # once per process, before building
    layer = network.add_plugin(trtp.op.coordgan.CorrLookup(q, k, v, tau=0.01, mode="soft", k=0),
                               aot=True)

TensorRT is imported lazily; nothing here runs at import time. Written against the TensorRT 10.x
``tensorrt.plugin`` documentation and samples; it has not been run here (no TensorRT, no GPU).
"""

from __future__ import annotations

PLUGIN_ID = "coordgan::CorrLookup"
_registered = False


def _import_trt():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError:
        from runtime.errors import CoordGANError

        raise CoordGANError(
            "The CorrLookup TensorRT plugin needs TensorRT 10 with its tensorrt.plugin module, which is not installed."
        ) from None
    return trt, trtp


def _constant(expr, what: str) -> int:
    from runtime.errors import CoordGANError

    if not expr.is_constant:
        raise CoordGANError(f"The CorrLookup plugin needs a build-time constant {what}; it is dynamic here.")
    return int(expr.constant_value())


def register() -> None:
    """Register ``coordgan::CorrLookup`` (description, formats, AOT implementation) with TensorRT."""
    global _registered
    if _registered:
        return
    trt, trtp = _import_trt()
    from typing import List, Tuple, Union

    from runtime.lookup import cuda as cl

    @trtp.register(PLUGIN_ID)
    def corr_lookup_desc(
        query: trtp.TensorDesc, ref_maps: trtp.TensorDesc, ref_probs: trtp.TensorDesc, tau: float, mode: str, k: int
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        q, v = query.shape_expr, ref_probs.shape_expr
        probs = trtp.from_shape_expr((q[0], v[2], q[2], q[3]), dtype=trt.float32)
        labels = trtp.from_shape_expr((q[0], q[2], q[3]), dtype=trt.int32)
        return probs, labels

    @trtp.autotune(PLUGIN_ID)
    def corr_lookup_autotune(
        query: trtp.TensorDesc,
        ref_maps: trtp.TensorDesc,
        ref_probs: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        # the three inputs share one type (the kernel is templated on it); outputs are fixed
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32, INT32", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def corr_lookup_aot_impl(
        query: trtp.TensorDesc,
        ref_maps: trtp.TensorDesc,
        ref_probs: trtp.TensorDesc,
        tau: float,
        mode: str,
        k: int,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        from runtime.lookup import spec

        q, kk, v = query.shape_expr, ref_maps.shape_expr, ref_probs.shape_expr
        c = _constant(v[2], "class count C (ref_probs dimension 2)")
        tau = spec.check_tau(tau)
        if mode not in spec.MODES:
            spec.check_mode(mode, None, 1)  # raises the standard sentence
        k_arg = 0
        if mode == "topk":
            if not 1 <= k <= spec.MAX_TOPK:
                from runtime.errors import CoordGANError

                raise CoordGANError(f"CorrLookup topk keeps 1 to {spec.MAX_TOPK} neighbours, got k = {k}.")
            k_arg = k
        dtype = "float16" if query.dtype == trt.float16 else "float32"
        name = cl.kernel_name(mode, dtype, c)
        ptx = cl.compile_ptx().rstrip(b"\0")  # for the build GPU; TensorRT embeds it in the engine

        hwq = q[2] * q[3]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(hwq, cl.BLOCK)
        launch.grid_y = q[0]
        launch.block_x = cl.BLOCK
        launch.shared_mem = 0  # static shared memory only
        # int32 scalars between the input and output pointers: N, Hq*Wq, R, Hk*Wk, C, tau bits, k
        scalars = [q[0], hwq, kk[1], kk[3] * kk[4], c, cl.tau_bits(tau), k_arg]
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
        return name.encode(), ptx, launch, extra_args

    _registered = True
