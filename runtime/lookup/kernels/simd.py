"""8 x float32 vectors (LLVM ``<8 x float>`` values) for numba, kept in registers by the compiler,
and a vectorisable exp: the SIMD pieces of the sparse kernels (AVX2-sized; LLVM splits them where
the CPU's vectors are narrower)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model


class _F32x8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F32x8")


f32x8 = _F32x8()
_VEC = ir.VectorType(ir.FloatType(), 8)
_I32 = ir.IntType(32)


@register_model(_F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _vec_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _VEC.as_pointer())


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), ir.Constant(ir.VectorType(_I32, 8), [0] * 8))


def _f32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32


@intrinsic
def v8_splat(typingctx, w):
    """(w, w, ..., w)."""
    if w != types.float32:
        return None
    return f32x8(w), lambda context, builder, sig, args: _splat(builder, args[0])


@intrinsic
def v8_load(typingctx, arr, idx):
    """arr[idx : idx + 8] of a C-contiguous float32 array; NOT bounds checked."""
    if not (_f32_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)

    return f32x8(arr, idx), codegen


@intrinsic
def v8_store(typingctx, arr, idx, vec):
    """arr[idx : idx + 8] = vec; NOT bounds checked."""
    if not (_f32_array(arr) and isinstance(idx, types.Integer) and vec == f32x8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def v8_fma(typingctx, acc, w, x):
    """acc + w * x, w a float32 scalar broadcast to the 8 lanes, fused."""
    if not (acc == f32x8 and x == f32x8 and w == types.float32):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        return builder.call(fn, [_splat(builder, args[1]), args[2], args[0]])

    return f32x8(acc, w, x), codegen


@intrinsic
def v8_add(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None
    return f32x8(a, b), lambda context, builder, sig, args: builder.fadd(args[0], args[1])


@intrinsic
def v8_sub(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None
    return f32x8(a, b), lambda context, builder, sig, args: builder.fsub(args[0], args[1])


@intrinsic
def v8_norm2(typingctx, dx, dy):
    """dx * dx + dy * dy lane by lane (the second product fused): the squared distance."""
    if not (dx == f32x8 and dy == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        return builder.call(fma, [args[1], args[1], builder.fmul(args[0], args[0])])

    return f32x8(dx, dy), codegen


@intrinsic
def v8_norm(typingctx, dx, dy):
    """sqrt(dx * dx + dy * dy) lane by lane (the second product fused)."""
    if not (dx == f32x8 and dy == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC]), "llvm.sqrt.v8f32")
        return builder.call(sqrt, [builder.call(fma, [args[1], args[1], builder.fmul(args[0], args[0])])])

    return f32x8(dx, dy), codegen


@intrinsic
def v8_min(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 2), "llvm.minnum.v8f32")
        return builder.call(fn, args)

    return f32x8(a, b), codegen


@intrinsic
def v8_hmin(typingctx, a):
    """Smallest of the 8 lanes."""
    if a != f32x8:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [_VEC]),
                                            "llvm.vector.reduce.fmin.v8f32")
        return builder.call(fn, args)

    return types.float32(a), codegen


@intrinsic
def bits_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        return builder.bitcast(v, ir.FloatType())

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
