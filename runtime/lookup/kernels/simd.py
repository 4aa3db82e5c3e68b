"""float32 vectors (LLVM ``<8 x float>`` and ``<16 x float>`` values) for numba, kept in registers by
the compiler, and vectorisable exps: the SIMD pieces of the sparse kernels. LLVM splits a vector
wider than the CPU's into several (16 lanes are one AVX-512 register, two AVX2 ones).

A vector is made by ``v8_splat`` / ``v8_load`` or ``v16_splat`` / ``v16_load``; every other
operation (``v_add``, ``v_fma``, ``v_exp2_weight``, ...) takes the width from its arguments."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

_F32 = ir.FloatType()
_I32 = ir.IntType(32)


class F32xN(types.Type):
    """n float32 lanes."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"F32x{lanes}")


@register_model(F32xN)
class _F32xNModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_F32, fe_type.lanes))


f32x8 = F32xN(8)
f32x16 = F32xN(16)


def _vec(t) -> bool:
    return isinstance(t, F32xN)


def _same(*ts) -> bool:
    return all(_vec(t) for t in ts) and len({t.lanes for t in ts}) == 1


def _splat(builder, value, lanes: int):
    vec = ir.VectorType(_F32, lanes)
    v = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), zeros)


def _call(builder, name: str, *args):
    """An LLVM vector intrinsic, e.g. _call(b, "fma", x, y, z) -> llvm.fma.v8f32(x, y, z)."""
    vec = args[0].type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * len(args)),
                                        f"llvm.{name}.v{vec.count}f32")
    return builder.call(fn, list(args))


def _vec_ptr(context, builder, arrty, arr, idx, lanes: int):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), ir.VectorType(_F32, lanes).as_pointer())


def _f32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32


def _constructors(vt: F32xN):
    lanes = vt.lanes

    @intrinsic
    def splat(typingctx, w):
        """(w, w, ..., w)."""
        if w != types.float32:
            return None
        return vt(w), lambda context, builder, sig, args: _splat(builder, args[0], lanes)

    @intrinsic
    def load(typingctx, arr, idx):
        """arr[idx : idx + lanes] of a C-contiguous float32 array; NOT bounds checked."""
        if not (_f32_array(arr) and isinstance(idx, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1], lanes), align=4)

        return vt(arr, idx), codegen

    return splat, load


v8_splat, v8_load = _constructors(f32x8)
v16_splat, v16_load = _constructors(f32x16)


@intrinsic
def v_store(typingctx, arr, idx, vec):
    """arr[idx : idx + lanes] = vec; NOT bounds checked."""
    if not (_f32_array(arr) and isinstance(idx, types.Integer) and _vec(vec)):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vec_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[2].lanes), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


def _lanewise(build):
    @intrinsic
    def op(typingctx, a, b):
        if not _same(a, b):
            return None
        return a(a, b), lambda context, builder, sig, args: build(builder, *args)

    return op


v_add = _lanewise(lambda b, x, y: b.fadd(x, y))
v_sub = _lanewise(lambda b, x, y: b.fsub(x, y))
v_mul = _lanewise(lambda b, x, y: b.fmul(x, y))
v_min = _lanewise(lambda b, x, y: _call(b, "minnum", x, y))
# sqrt(dx * dx + dy * dy) and its square, the second product fused
v_norm2 = _lanewise(lambda b, dx, dy: _call(b, "fma", dy, dy, b.fmul(dx, dx)))
v_norm = _lanewise(lambda b, dx, dy: _call(b, "sqrt", _call(b, "fma", dy, dy, b.fmul(dx, dx))))


@intrinsic
def v_fma(typingctx, acc, w, x):
    """acc + w * x lane by lane, fused."""
    if not _same(acc, w, x):
        return None
    return acc(acc, w, x), lambda context, builder, sig, args: _call(builder, "fma", args[1], args[2], args[0])


def _reduce(builder, name: str, vec, *start):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [s.type for s in start] + [vec.type]),
                                        f"llvm.vector.reduce.{name}.v{vec.type.count}f32")
    return builder.call(fn, [*start, vec], fastmath=("reassoc",) if start else ())


@intrinsic
def v_hsum(typingctx, a):
    """Sum of the lanes (in any order)."""
    if not _vec(a):
        return None
    return types.float32(a), lambda context, builder, sig, args: _reduce(builder, "fadd", args[0],
                                                                         ir.Constant(_F32, 0.0))


@intrinsic
def v_hmin(typingctx, a):
    """Smallest lane."""
    if not _vec(a):
        return None
    return types.float32(a), lambda context, builder, sig, args: _reduce(builder, "fmin", args[0])


# 2^r on [-1/2, 1/2]: degree-5 polynomial fitted for relative error (1.9e-7 in float32), constant term 1.
_EXP2_POLY = (0.00132647, 0.00967151, 0.05550734, 0.24022242, 0.69314698, 1.0)
# The logit floor (spec.LOGIT_FLOOR = -50 in natural-log units) in log2 units, and a ceiling that keeps
# 2^t a normal float32 when the reference distance is not the nearest one.
EXP2_FLOOR = -50.0 * 1.4426950408889634
EXP2_CEIL = 64.0


@intrinsic
def v_exp2_weight(typingctx, d_ref, d):
    """2^(d_ref - d) lane by lane, the exponent clamped to [EXP2_FLOOR, EXP2_CEIL], for distances already
    in log2 units (scaled by log2(e) / tau): exp(-(d - d_ref) / tau), relative error < 3e-7. 2^n is
    added to the exponent bits (the result stays a normal float). Five FMAs a vector, so the weights
    cost little beside the channel sums that share the FMA pipes."""
    if not (d_ref == types.float32 and _vec(d)):
        return None

    def codegen(context, builder, sig, args):
        lanes = sig.args[1].lanes

        def const(v):
            return _splat(builder, ir.Constant(_F32, v), lanes)

        t = builder.fsub(_splat(builder, args[0], lanes), args[1])
        t = _call(builder, "maxnum", _call(builder, "minnum", t, const(EXP2_CEIL)), const(EXP2_FLOOR))
        n = _call(builder, "rint", t)
        r = builder.fsub(t, n)
        p = const(_EXP2_POLY[0])
        for c in _EXP2_POLY[1:]:
            p = _call(builder, "fma", p, r, const(c))
        iv = ir.VectorType(_I32, lanes)
        e = builder.shl(builder.fptosi(n, iv), ir.Constant(iv, [23] * lanes))
        return builder.bitcast(builder.add(builder.bitcast(p, iv), e), args[1].type)

    return d(d_ref, d), codegen


@intrinsic
def bits_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        return builder.bitcast(v, _F32)

    return types.float32(x), codegen


@numba.njit(inline="always", fastmath=True)
def exp_neg(t):
    """exp(t) for float32 t clamped to [-50, 0] (-50: the logit floor of the dense path), relative error
    < 3e-6: t = n ln2 + r, |r| <= ln2 / 2, degree-6 Taylor polynomial for exp(r), 2^n from the exponent
    bits. Vectorisable, unlike a libm call."""
    t = min(max(t, np.float32(-50.0)), np.float32(0.0))
    nf = np.floor(t * np.float32(1.4426950408889634) + np.float32(0.5))
    r = t - nf * np.float32(0.6931471805599453)
    p = np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * bits_as_f32((np.int32(nf) + 127) << 23)
