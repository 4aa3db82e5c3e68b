// Fused correspondence lookup for CoordGAN: soft / hard / top-k label propagation by coordinate
// distance, in one pass over the reference pixels, without materialising the affinity matrix.
//
// Semantics: those of coordgan.correspondence.lookup (the torch reference), for contiguous arrays
//   Q (N, 2, Hq, Wq)      query correspondence maps            float32 or float16
//   K (N, R, 2, Hk, Wk)   reference correspondence maps        same type as Q
//   V (N, R, C, Hk, Wk)   reference label probabilities (>= 0) same type as Q
//   P (N, C, Hq, Wq)      float32 output, written once per element
//   L (N, Hq, Wq)         int32 output = argmax_c P (first maximum on ties)
// with reference pixels in the order j = (r, y, x) and d_ij = sqrt(dx*dx + dy*dy):
//   soft: P_i = sum_j softmax_j(-d_ij / tau) V_j
//   hard: P_i = V_j*, j* = the nearest pixel (lowest j on exact ties)
//   topk: soft restricted to the k nearest pixels (ties broken by lower j), 1 <= k <= 64
//
// Design
// * One thread per query pixel; a block of CL_BLOCK threads streams all R*Hk*Wk reference pixels
//   through shared memory in tiles of CL_BLOCK pixels (coordinates, and for soft the C values),
//   each thread reading the same tile entry at the same time (shared-memory broadcast).
// * soft keeps an online ("flash") softmax per thread: a reference distance m, the running sum
//   s = sum_j exp((m - d_j)/tau) and acc[c] = sum_j exp((m - d_j)/tau) V_j[c], all fp32. m is
//   lowered (and s, acc rescaled) only when a pixel comes more than 20*tau closer than m, so
//   weights stay <= e^20 and the rescale branch is taken a handful of times per query, not at
//   every new minimum; the result acc / s does not depend on m.
// * Per pixel pair: 2 FADD, 1 FMUL, 1 FFMA for d^2, sqrt.approx (1 SFU op), 1 FADD + 1 FMUL +
//   ex2.approx (1 SFU op) for the weight, 1 FADD + C FFMA for the accumulation. Approximate sqrt/ex2 have relative
//   errors ~1e-7, which the 1/tau amplification turns into ~1e-6..1e-5 on P (tests allow 1e-4).
// * hard and topk select on correctly rounded distances (__fsqrt_rn of fmaf(dy, dy, dx*dx), as a
//   CUDA torch reference computes them) scanning j in increasing order with strict comparisons,
//   so exact ties resolve to the lowest j like the reference. topk keeps the k best (d, j) per
//   thread (local memory), then weights them with expf and reads their V from global memory.
// * C (classes) is a template parameter CMAX in {1, 2, 4, 8, 16, 32, 64}; any C <= 64 runs on the
//   next CMAX up with the extra classes masked (zeros in shared memory, never written out).
// * Input type T: float or half (passed as unsigned short and widened with cvt.f32.f16, so the
//   file needs no CUDA headers and compiles unchanged with nvcc, NVRTC and TensorRT).
//
// Launch configuration (every entry point):
//   grid  = (ceil(Hq*Wq / CL_BLOCK), N, 1)
//   block = (CL_BLOCK, 1, 1) = (128, 1, 1), dynamic shared memory = 0 (static, <= 34 KB for C = 64)
//   any stream; the kernel reads Q, K, V and writes every element of P and labels exactly once.
// Entry points (extern "C", so the names in PTX/cubin are these exact strings):
//   corr_lookup_<mode>_<type>_c<CMAX>, mode in {soft, hard, topk}, type in {f32, f16},
//   CMAX in {1, 2, 4, 8, 16, 32, 64}; e.g. corr_lookup_soft_f16_c8. Signature of all of them:
//   (const T* Q, const T* K, const T* V,
//    int N, int HWq, int R, int HWk, int C, int tau_bits, int k,
//    float* P, int* labels)
//   i.e. inputs, then int32 scalars, then outputs: the order TensorRT's AOT plugins (tensorrt.plugin
//   aot_impl) launch with, whose extra arguments are int32 only; hence tau is passed as the int32
//   holding its IEEE-754 float bits (__int_as_float in the kernel, struct.pack on the host).
// Requirements (checked by the launcher, not here): contiguous arrays, 1 <= C <= CMAX, tau > 0,
// finite coordinates, for topk 1 <= k <= min(64, R*HWk); HWq, HWk, R*HWk < 2^31.

#define CL_BLOCK 128
#define CL_TOPK_MAX 64
#define CL_RESCALE 20.0f  // lower the running reference distance when a pixel is 20*tau closer

namespace corr_lookup {

typedef unsigned short half_bits;  // IEEE binary16 storage

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(half_bits v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}

__device__ __forceinline__ float sqrt_approx(float x) {
    float y;
    asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <int CMAX>
__device__ __forceinline__ void write_out(const float* p, float* P, int* labels, long long n, int i, int HWq, int C) {
    int best = 0;
    float best_v = p[0];
#pragma unroll
    for (int c = 0; c < CMAX; ++c) {
        if (c < C) {
            P[(n * C + c) * (long long)HWq + i] = p[c];
            if (p[c] > best_v) {  // strict: first maximum on ties
                best_v = p[c];
                best = c;
            }
        }
    }
    labels[n * (long long)HWq + i] = best;
}

// ------------------------------------------------------------------------------------------------
// soft

template <typename T, int CMAX>
__device__ __forceinline__ void soft(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                                     float* __restrict__ P, int* __restrict__ labels, int HWq, int R, int HWk,
                                     int C, float tau) {
    __shared__ float2 s_xy[CL_BLOCK];
    __shared__ __align__(16) float s_v[CL_BLOCK][CMAX];

    const long long n = blockIdx.y;
    const int i = blockIdx.x * CL_BLOCK + threadIdx.x;
    const bool active = i < HWq;
    const float qx = active ? to_float(Q[(n * 2 + 0) * HWq + i]) : 0.f;
    const float qy = active ? to_float(Q[(n * 2 + 1) * HWq + i]) : 0.f;

    const float scale = 1.4426950408889634f / tau;  // log2(e) / tau: weights via ex2
    const float gap = CL_RESCALE * tau;
    float m = __int_as_float(0x7f800000);  // +inf: the first pixel always sets m
    float m_lower = m;                      // rescale when d < m - 20*tau
    float s = 0.f;
    float acc[CMAX];
#pragma unroll
    for (int c = 0; c < CMAX; ++c) acc[c] = 0.f;

    for (int r = 0; r < R; ++r) {
        const T* k_r = K + (n * R + r) * 2 * (long long)HWk;
        const T* v_r = V + (n * R + r) * (long long)C * HWk;
        for (int p0 = 0; p0 < HWk; p0 += CL_BLOCK) {
            const int cnt = min(CL_BLOCK, HWk - p0);
            __syncthreads();  // the previous tile is consumed
            if (threadIdx.x < cnt) {
                const int p = p0 + threadIdx.x;
                s_xy[threadIdx.x] = make_float2(to_float(k_r[p]), to_float(k_r[HWk + p]));
#pragma unroll
                for (int c = 0; c < CMAX; ++c)
                    s_v[threadIdx.x][c] = c < C ? to_float(v_r[(long long)c * HWk + p]) : 0.f;
            }
            __syncthreads();
            for (int t = 0; t < cnt; ++t) {
                const float2 kxy = s_xy[t];
                const float dx = qx - kxy.x;
                const float dy = qy - kxy.y;
                const float d = sqrt_approx(fmaf(dy, dy, dx * dx));
                if (d < m_lower) {  // rare: move the reference distance down to d
                    const float f = exp2_approx((d - m) * scale);  // 0 when m = +inf
                    s = fmaf(s, f, 1.f);
#pragma unroll
                    for (int c = 0; c < CMAX; ++c) acc[c] = fmaf(acc[c], f, s_v[t][c]);
                    m = d;
                    m_lower = d - gap;
                } else {
                    // exp((m - d) / tau): subtract first, so the rounding is relative to m - d
                    // (small), not to m / tau (large for a small tau or a far query)
                    const float w = exp2_approx((m - d) * scale);
                    s += w;
#pragma unroll
                    for (int c = 0; c < CMAX; ++c) acc[c] = fmaf(w, s_v[t][c], acc[c]);
                }
            }
        }
    }
    if (!active) return;
    const float inv = 1.f / s;
    float out[CMAX];
#pragma unroll
    for (int c = 0; c < CMAX; ++c) out[c] = acc[c] * inv;
    write_out<CMAX>(out, P, labels, n, i, HWq, C);
}

// ------------------------------------------------------------------------------------------------
// hard and topk: selection on correctly rounded distances, V read from global memory at the end

template <typename T>
__device__ __forceinline__ bool load_coords_tile(const T* k_r, int p0, int HWk, float2* s_xy, int* cnt_out) {
    const int cnt = min(CL_BLOCK, HWk - p0);
    __syncthreads();
    if (threadIdx.x < cnt) {
        const int p = p0 + threadIdx.x;
        s_xy[threadIdx.x] = make_float2(to_float(k_r[p]), to_float(k_r[HWk + p]));
    }
    __syncthreads();
    *cnt_out = cnt;
    return true;
}

template <typename T, int CMAX>
__device__ __forceinline__ void hard(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                                     float* __restrict__ P, int* __restrict__ labels, int HWq, int R, int HWk,
                                     int C) {
    __shared__ float2 s_xy[CL_BLOCK];
    const long long n = blockIdx.y;
    const int i = blockIdx.x * CL_BLOCK + threadIdx.x;
    const bool active = i < HWq;
    const float qx = active ? to_float(Q[(n * 2 + 0) * HWq + i]) : 0.f;
    const float qy = active ? to_float(Q[(n * 2 + 1) * HWq + i]) : 0.f;

    float best_d = __int_as_float(0x7f800000);
    int best_r = 0, best_p = 0;
    for (int r = 0; r < R; ++r) {
        const T* k_r = K + (n * R + r) * 2 * (long long)HWk;
        for (int p0 = 0; p0 < HWk; p0 += CL_BLOCK) {
            int cnt;
            load_coords_tile(k_r, p0, HWk, s_xy, &cnt);
            for (int t = 0; t < cnt; ++t) {
                const float dx = qx - s_xy[t].x;
                const float dy = qy - s_xy[t].y;
                const float d = __fsqrt_rn(fmaf(dy, dy, dx * dx));
                if (d < best_d) {  // strict, j increasing: lowest j wins ties
                    best_d = d;
                    best_r = r;
                    best_p = p0 + t;
                }
            }
        }
    }
    if (!active) return;
    const T* v = V + (n * R + best_r) * (long long)C * HWk + best_p;
    float out[CMAX];
#pragma unroll
    for (int c = 0; c < CMAX; ++c) out[c] = c < C ? to_float(v[(long long)c * HWk]) : 0.f;
    write_out<CMAX>(out, P, labels, n, i, HWq, C);
}

template <typename T, int CMAX>
__device__ __forceinline__ void topk(const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
                                     float* __restrict__ P, int* __restrict__ labels, int HWq, int R, int HWk,
                                     int C, float tau, int k) {
    __shared__ float2 s_xy[CL_BLOCK];
    const long long n = blockIdx.y;
    const int i = blockIdx.x * CL_BLOCK + threadIdx.x;
    const bool active = i < HWq;
    const float qx = active ? to_float(Q[(n * 2 + 0) * HWq + i]) : 0.f;
    const float qy = active ? to_float(Q[(n * 2 + 1) * HWq + i]) : 0.f;

    // The k best so far, sorted by (d, j): equal distances keep their arrival (= j) order.
    float bd[CL_TOPK_MAX];
    int bj[CL_TOPK_MAX];
    for (int a = 0; a < k; ++a) {
        bd[a] = __int_as_float(0x7f800000);
        bj[a] = -1;
    }
    for (int r = 0; r < R; ++r) {
        const T* k_r = K + (n * R + r) * 2 * (long long)HWk;
        for (int p0 = 0; p0 < HWk; p0 += CL_BLOCK) {
            int cnt;
            load_coords_tile(k_r, p0, HWk, s_xy, &cnt);
            for (int t = 0; t < cnt; ++t) {
                const float dx = qx - s_xy[t].x;
                const float dy = qy - s_xy[t].y;
                const float d = __fsqrt_rn(fmaf(dy, dy, dx * dx));
                if (d < bd[k - 1]) {  // strict: a tie with the k-th has a larger j and loses
                    int a = k - 1;
                    while (a > 0 && bd[a - 1] > d) {  // strict: stay behind equal distances
                        bd[a] = bd[a - 1];
                        bj[a] = bj[a - 1];
                        --a;
                    }
                    bd[a] = d;
                    bj[a] = r * HWk + p0 + t;
                }
            }
        }
    }
    if (!active) return;
    // softmax over the kept pixels with the max logit (-bd[0]/tau) subtracted, as the reference
    float acc[CMAX];
#pragma unroll
    for (int c = 0; c < CMAX; ++c) acc[c] = 0.f;
    float s = 0.f;
    for (int a = 0; a < k; ++a) {
        const float w = expf((bd[a] - bd[0]) / -tau);
        const int j = bj[a];
        const int r = j / HWk, p = j - r * HWk;
        const T* v = V + (n * R + r) * (long long)C * HWk + p;
        s += w;
#pragma unroll
        for (int c = 0; c < CMAX; ++c)
            if (c < C) acc[c] = fmaf(w, to_float(v[(long long)c * HWk]), acc[c]);
    }
    const float inv = 1.f / s;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) acc[c] *= inv;
    write_out<CMAX>(acc, P, labels, n, i, HWq, C);
}

}  // namespace corr_lookup

// ------------------------------------------------------------------------------------------------
// Entry points: corr_lookup_<mode>_<type>_c<CMAX>, one uniform signature.

#define CL_ENTRY(MODE, TNAME, T, CMAX, CALL)                                                          \
    extern "C" __global__ void __launch_bounds__(CL_BLOCK)                                           \
        corr_lookup_##MODE##_##TNAME##_c##CMAX(const T* Q, const T* K, const T* V, int N, int HWq, int R, \
                                               int HWk, int C, int tau_bits, int k, float* P, int* labels) { \
        const float tau = __int_as_float(tau_bits);                                                  \
        (void)N;                                                                                     \
        (void)tau;                                                                                   \
        (void)k;                                                                                     \
        CALL;                                                                                        \
    }

#define CL_MODES(TNAME, T, CMAX)                                                                      \
    CL_ENTRY(soft, TNAME, T, CMAX, (corr_lookup::soft<T, CMAX>(Q, K, V, P, labels, HWq, R, HWk, C, tau))) \
    CL_ENTRY(hard, TNAME, T, CMAX, (corr_lookup::hard<T, CMAX>(Q, K, V, P, labels, HWq, R, HWk, C)))      \
    CL_ENTRY(topk, TNAME, T, CMAX, (corr_lookup::topk<T, CMAX>(Q, K, V, P, labels, HWq, R, HWk, C, tau, k)))

#define CL_TYPES(CMAX)                  \
    CL_MODES(f32, float, CMAX)          \
    CL_MODES(f16, corr_lookup::half_bits, CMAX)

CL_TYPES(1)
CL_TYPES(2)
CL_TYPES(4)
CL_TYPES(8)
CL_TYPES(16)
CL_TYPES(32)
CL_TYPES(64)
