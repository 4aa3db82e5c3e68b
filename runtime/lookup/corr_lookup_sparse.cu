// Sparse correspondence lookup on a GPU: per query, only the reference pixels whose softmax weight can
// matter, with the CPU sparse path's error bound (runtime/lookup/sparse.py, `lookup_sparse`).
//
// Semantics: those of corr_lookup.cu (read its header) for float32 inputs
//   Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk) -> P (N, C, Hq, Wq), L (N, Hq, Wq)
// hard and topk give the dense result (the k nearest, ties to the lowest j); soft neglects, per query,
// at most `tol` of the softmax mass: |dP| <= tol * max(V), plus float32 rounding.
//
// Design. Each batch item's M = R*Hk*Wk reference pixels are bucketed into a gx x gy grid of cells
// over their bounding box (row bands of height sy, narrow columns of width sx; the sizes of
// sparse.py's `_grid`) and stored sorted by cell, row-major, so the cells c0..c1 of one band are one
// contiguous slice. A summed-area table `sat` ((gy + 1) x (gx + 1) ints: pixels in bands < r and
// columns < c) gives both any rectangle's pixel count and every slice's bounds:
//   start(r, c) = sat[r][gx] + sat[r + 1][c] - sat[r][c].
// One thread per query grows a square of half-width h around the query, adding the cells it newly
// meets (a ring: per band at most two slices). Every pixel closer than h lies in the cells met, so
//   * the nearest pixel is certain once one is closer than h (less a float32 margin);
//   * the weight of the pixels not evaluated (all at distance >= h) is bounded from counts of the
//     cells met by larger squares: the shell bound of `lookup_sparse`, with its square counts;
//   * soft stops once that bound is <= tol x the weight evaluated; hard and topk once the k-th
//     nearest is closer than h (every pixel tied with it is then evaluated too).
// soft accumulates with the online ("flash") softmax of corr_lookup.cu (lazy rescale, 20 tau).
//
// Kernels, in launch order, all "one thread per element" with no shared memory and no barriers
// (so the host build below runs them as plain loops). Each takes (count, items, ...): grid =
// (ceil(count / CLS_BLOCK), items), block = CLS_BLOCK, and thread (idx, n) works on element idx of
// batch item n.
//   cls_init      count = cells_max: zero the cell counts and pairs; reset the bounds
//   cls_bounds    count = ceil(M / CLS_CHUNK): min / max of the coordinates (ordered-int atomics)
//   cls_geometry  count = 1: the grid of each item (x0, y0, sx, sy; gx, gy)
//   cls_count     count = M: each pixel's cell, and the pixels per cell (atomics)
//   cls_rows      count = gy_max: the summed-area table's rows (prefix sums within a band)
//   cls_cols      count = gx_max + 1: ... then down the columns
//   cls_scatter   count = M: pixels sorted by cell: x, y, original index j, and V (cp floats per pixel)
//   cls_<mode>_c<CMAX>   count = Hq*Wq: the lookup, mode in {soft, hard, topk}, CMAX as corr_lookup.cu
// Workspace (int32 unless noted), per batch item n:
//   bounds[4 N]   ordered-int min x, min y, max x, max y      geo[4 N] float32 x0, y0, sx, sy
//   dims[2 N]     gx, gy                                      cell[N M], cnt[N cells_max]
//   sat[N sat_max], sat_max = (gy_max + 1) * (gx_max + 1) with gx * gy <= cells_max
//   sx_[N M], sy_[N M] float32, sj[N M], sv[N M cp] float32 (cp = CMAX of the lookup kernel), pairs[N] uint64
//
// Compiled three ways from this one text, with no #include: nvcc / NVRTC for the GPU (CLS_HOST
// undefined), and any C++ compiler with -DCLS_HOST -x c++, where each kernel becomes an extern "C"
// function running its threads one after another (atomics as plain updates, the approximate
// sqrt / exp2 as sqrtf / exp2f), so the suite runs this code, and its launcher, on machines
// without a GPU (runtime/lookup/cuda_sparse.py).

#define CLS_BLOCK 128
#define CLS_CHUNK 64        // pixels per thread of cls_bounds (few atomics on the same four words)
#define CLS_TOPK_MAX 64
#define CLS_RESCALE 20.0f   // as corr_lookup.cu
#define CLS_EPS 1e-5f       // widens every cell range (>> float32 rounding of coordinates <= 3)
#define CLS_DIST_MARGIN 2e-5f  // a pixel outside the cells met is farther than h - this in float32
#define CLS_LOGIT_FLOOR_WEIGHT 1.9287498479639178e-22f  // exp(-50), spec.LOGIT_FLOOR

#ifdef CLS_HOST
#define CLS_HD static inline
#define CLS_MEMBER inline
#define CLS_GLOBAL
static inline float cls_sqrt(float x) { return __builtin_sqrtf(x); }
static inline float cls_sqrt_rn(float x) { return __builtin_sqrtf(x); }
static inline float cls_exp2(float x) { return __builtin_exp2f(x); }
static inline float cls_exp(float x) { return __builtin_expf(x); }
static inline float cls_log(float x) { return __builtin_logf(x); }
static inline float cls_fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline int cls_atomic_add(int* p, int v) { int old = *p; *p += v; return old; }
static inline void cls_atomic_add64(unsigned long long* p, unsigned long long v) { *p += v; }
static inline void cls_atomic_min(int* p, int v) { if (v < *p) *p = v; }
static inline void cls_atomic_max(int* p, int v) { if (v > *p) *p = v; }
static inline float cls_int_as_float(int i) { union { int i; float f; } u; u.i = i; return u.f; }
static inline int cls_float_as_int(float f) { union { int i; float f; } u; u.f = f; return u.i; }
#define CLS_FOR_EACH(idx, n)                      \
    for (int n = 0; n < items; ++n)               \
        for (int idx = 0; idx < count; ++idx)
#else
#define CLS_HD __device__ __forceinline__
#define CLS_MEMBER __device__ __forceinline__
#define CLS_GLOBAL __global__ void __launch_bounds__(CLS_BLOCK)
__device__ __forceinline__ float cls_sqrt(float x) {
    float y;
    asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float cls_sqrt_rn(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ float cls_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float cls_exp(float x) { return expf(x); }
__device__ __forceinline__ float cls_log(float x) { return logf(x); }
__device__ __forceinline__ float cls_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ int cls_atomic_add(int* p, int v) { return atomicAdd(p, v); }
__device__ __forceinline__ void cls_atomic_add64(unsigned long long* p, unsigned long long v) { atomicAdd(p, v); }
__device__ __forceinline__ void cls_atomic_min(int* p, int v) { atomicMin(p, v); }
__device__ __forceinline__ void cls_atomic_max(int* p, int v) { atomicMax(p, v); }
__device__ __forceinline__ float cls_int_as_float(int i) { return __int_as_float(i); }
__device__ __forceinline__ int cls_float_as_int(float f) { return __float_as_int(f); }
#define CLS_FOR_EACH(idx, n)                                   \
    const int idx = blockIdx.x * CLS_BLOCK + threadIdx.x;      \
    const int n = blockIdx.y;                                  \
    if (idx < count)
#endif

#define CLS_INF cls_int_as_float(0x7f800000)
#define CLS_UNPAREN(...) __VA_ARGS__
// extern "C" entry NAME(int count, int items, PARAMS...) running NAME_body(idx, n, ARGS...) per thread
#ifdef CLS_HOST
#define CLS_KERNEL(NAME, PARAMS, ARGS)                                           \
    extern "C" void NAME(int count, int items, CLS_UNPAREN PARAMS) {             \
        CLS_FOR_EACH(idx, n) NAME##_body(idx, n, CLS_UNPAREN ARGS);              \
    }
#else
#define CLS_KERNEL(NAME, PARAMS, ARGS)                                           \
    extern "C" CLS_GLOBAL NAME(int count, int items, CLS_UNPAREN PARAMS) {       \
        (void)items;                                                             \
        CLS_FOR_EACH(idx, n) NAME##_body(idx, n, CLS_UNPAREN ARGS);              \
    }
#endif

// float <-> an int whose signed order is the float order (for atomicMin / atomicMax)
CLS_HD int cls_ordered(float f) {
    const int i = cls_float_as_int(f);
    return i >= 0 ? i : i ^ 0x7fffffff;
}
CLS_HD float cls_unordered(int i) { return cls_int_as_float(i >= 0 ? i : i ^ 0x7fffffff); }

// Cell of a coordinate: monotone in v, the same arithmetic for the bucketing and the queries.
CLS_HD int cls_cell(float v, float lo, float inv_s, int cells) {
    const float t = (v - lo > 0.f ? v - lo : 0.f) * inv_s;
    const int c = t < 2.0e9f ? (int)t : 2000000000;
    return c < cells - 1 ? c : cells - 1;
}

// ------------------------------------------------------------------------------------------------
// Building the grid

CLS_HD void cls_init_body(int idx, int n, int* cnt, int cells_max, int* bounds, unsigned long long* pairs) {
    cnt[(long long)n * cells_max + idx] = 0;
    if (idx < 2) bounds[4 * n + idx] = cls_ordered(CLS_INF);           // min x, min y
    else if (idx < 4) bounds[4 * n + idx] = cls_ordered(-CLS_INF);     // max x, max y
    else if (idx == 4) pairs[n] = 0;
}
CLS_KERNEL(cls_init, (int* cnt, int cells_max, int* bounds, unsigned long long* pairs), (cnt, cells_max, bounds, pairs))

// K (N, R, 2, HWk): pixel j = r * HWk + p has x = K[n, r, 0, p], y = K[n, r, 1, p]
CLS_HD float cls_kx(const float* K, int n, int R, int HWk, int j) {
    const int r = j / HWk, p = j - r * HWk;
    return K[(((long long)n * R + r) * 2) * HWk + p];
}
CLS_HD float cls_ky(const float* K, int n, int R, int HWk, int j) {
    const int r = j / HWk, p = j - r * HWk;
    return K[(((long long)n * R + r) * 2 + 1) * HWk + p];
}

CLS_HD void cls_bounds_body(int idx, int n, const float* K, int R, int HWk, int* bounds) {
    const int M = R * HWk;
    float lx = CLS_INF, ly = CLS_INF, hx = -CLS_INF, hy = -CLS_INF;
    const int j1 = (idx + 1) * CLS_CHUNK < M ? (idx + 1) * CLS_CHUNK : M;
    for (int j = idx * CLS_CHUNK; j < j1; ++j) {
        const float x = cls_kx(K, n, R, HWk, j), y = cls_ky(K, n, R, HWk, j);
        lx = x < lx ? x : lx;
        ly = y < ly ? y : ly;
        hx = x > hx ? x : hx;
        hy = y > hy ? y : hy;
    }
    cls_atomic_min(&bounds[4 * n + 0], cls_ordered(lx));
    cls_atomic_min(&bounds[4 * n + 1], cls_ordered(ly));
    cls_atomic_max(&bounds[4 * n + 2], cls_ordered(hx));
    cls_atomic_max(&bounds[4 * n + 3], cls_ordered(hy));
}
CLS_KERNEL(cls_bounds, (const float* K, int R, int HWk, int* bounds), (K, R, HWk, bounds))

// sparse.py `_grid`: bands a quarter of a typical query radius high (half the pixel spacing + 12
// tau), columns narrower (a band's cells are one slice, so columns are cheap)
CLS_HD void cls_geometry_body(int idx, int n, const int* bounds, int M, float tau, int gx_max, int gy_max,
                              int cells_max, float* geo, int* dims) {
    (void)idx;
    const float x0 = cls_unordered(bounds[4 * n + 0]), y0 = cls_unordered(bounds[4 * n + 1]);
    float wx = cls_unordered(bounds[4 * n + 2]) - x0, wy = cls_unordered(bounds[4 * n + 3]) - y0;
    wx = wx > 1e-6f ? wx : 1e-6f;
    wy = wy > 1e-6f ? wy : 1e-6f;
    const float spacing = cls_sqrt_rn(wx * wy / (float)M);
    const float band = (spacing * 0.5f + 12.f * tau) * 0.25f;
    float t = wy / band;
    int gy = t < (float)gy_max ? (int)t + (t > (float)(int)t ? 1 : 0) : gy_max;
    gy = gy < 1 ? 1 : gy;
    const float col = band * 0.125f < spacing * 0.25f ? band * 0.125f : spacing * 0.25f;
    int gx_cap = cells_max / gy < gx_max ? cells_max / gy : gx_max;
    gx_cap = gx_cap < 1 ? 1 : gx_cap;
    t = wx / col;
    int gx = t < (float)gx_cap ? (int)t + (t > (float)(int)t ? 1 : 0) : gx_cap;
    gx = gx < 1 ? 1 : gx;
    geo[4 * n + 0] = x0;
    geo[4 * n + 1] = y0;
    geo[4 * n + 2] = wx / (float)gx * (1.f + 1e-5f);  // the largest coordinate stays inside the last cell
    geo[4 * n + 3] = wy / (float)gy * (1.f + 1e-5f);
    dims[2 * n + 0] = gx;
    dims[2 * n + 1] = gy;
}
CLS_KERNEL(cls_geometry,
           (const int* bounds, int M, float tau, int gx_max, int gy_max, int cells_max, float* geo, int* dims),
           (bounds, M, tau, gx_max, gy_max, cells_max, geo, dims))

CLS_HD int cls_cell_of_pixel(const float* geo, const int* dims, int n, float x, float y) {
    const int gx = dims[2 * n], gy = dims[2 * n + 1];
    const int cx = cls_cell(x, geo[4 * n + 0], 1.f / geo[4 * n + 2], gx);
    const int cy = cls_cell(y, geo[4 * n + 1], 1.f / geo[4 * n + 3], gy);
    return cy * gx + cx;
}

CLS_HD void cls_count_body(int idx, int n, const float* K, int R, int HWk, const float* geo, const int* dims,
                           int* cell, int* cnt, int cells_max) {
    const int M = R * HWk;
    const int c = cls_cell_of_pixel(geo, dims, n, cls_kx(K, n, R, HWk, idx), cls_ky(K, n, R, HWk, idx));
    cell[(long long)n * M + idx] = c;
    cls_atomic_add(&cnt[(long long)n * cells_max + c], 1);
}
CLS_KERNEL(cls_count,
           (const float* K, int R, int HWk, const float* geo, const int* dims, int* cell, int* cnt, int cells_max),
           (K, R, HWk, geo, dims, cell, cnt, cells_max))

// sat row r + 1 = prefix sums of band r's counts; row 0 = zeros
CLS_HD void cls_rows_body(int idx, int n, const int* cnt, int cells_max, const int* dims, int* sat, int sat_max) {
    const int gx = dims[2 * n], gy = dims[2 * n + 1];
    int* s = sat + (long long)n * sat_max;
    if (idx == 0)
        for (int c = 0; c <= gx; ++c) s[c] = 0;
    if (idx >= gy) return;
    const int* row = cnt + (long long)n * cells_max + idx * gx;
    int* out = s + (idx + 1) * (gx + 1);
    int run = 0;
    out[0] = 0;
    for (int c = 0; c < gx; ++c) {
        run += row[c];
        out[c + 1] = run;
    }
}
CLS_KERNEL(cls_rows, (const int* cnt, int cells_max, const int* dims, int* sat, int sat_max),
           (cnt, cells_max, dims, sat, sat_max))

// sat[r][c] += sat[r - 1][c] down each column: pixels in bands < r and columns < c
CLS_HD void cls_cols_body(int idx, int n, const int* dims, int* sat, int sat_max) {
    const int gx = dims[2 * n], gy = dims[2 * n + 1];
    if (idx > gx) return;
    int* s = sat + (long long)n * sat_max;
    for (int r = 1; r <= gy; ++r) s[r * (gx + 1) + idx] += s[(r - 1) * (gx + 1) + idx];
}
CLS_KERNEL(cls_cols, (const int* dims, int* sat, int sat_max), (dims, sat, sat_max))

CLS_HD int cls_start(const int* s, int gx, int r, int c) {
    return s[r * (gx + 1) + gx] + s[(r + 1) * (gx + 1) + c] - s[r * (gx + 1) + c];
}

// Pixels sorted by cell (in any order within a cell: hard and topk compare the original index j)
CLS_HD void cls_scatter_body(int idx, int n, const float* K, const float* V, int R, int HWk, int C, int cp,
                             const int* dims, const int* cell, int* cnt, int cells_max, const int* sat,
                             int sat_max, float* sx_, float* sy_, int* sj, float* sv) {
    const int M = R * HWk;
    const int gx = dims[2 * n];
    const int c = cell[(long long)n * M + idx];
    const int r_cell = c / gx, c_cell = c - r_cell * gx;
    const int left = cls_atomic_add(&cnt[(long long)n * cells_max + c], -1);  // count .. 1
    const long long pos = (long long)n * M + cls_start(sat + (long long)n * sat_max, gx, r_cell, c_cell) + left - 1;
    sx_[pos] = cls_kx(K, n, R, HWk, idx);
    sy_[pos] = cls_ky(K, n, R, HWk, idx);
    sj[pos] = idx;
    const int r = idx / HWk, p = idx - r * HWk;
    const float* v = V + ((long long)n * R + r) * C * HWk + p;
    for (int u = 0; u < cp; ++u) sv[pos * cp + u] = u < C ? v[(long long)u * HWk] : 0.f;
}
CLS_KERNEL(cls_scatter,
           (const float* K, const float* V, int R, int HWk, int C, int cp, const int* dims, const int* cell, int* cnt,
            int cells_max, const int* sat, int sat_max, float* sx_, float* sy_, int* sj, float* sv),
           (K, V, R, HWk, C, cp, dims, cell, cnt, cells_max, sat, sat_max, sx_, sy_, sj, sv))

// ------------------------------------------------------------------------------------------------
// The lookup: one thread per query

struct ClsGrid {
    const float* x;   // sorted pixels of item n
    const float* y;
    const int* j;
    const float* v;   // cp floats per pixel
    const int* sat;
    float x0, y0, sx, sy, inv_sx, inv_sy;
    int gx, gy, m;
};

CLS_HD ClsGrid cls_grid(int n, int M, int cp, const float* geo, const int* dims, const int* sat, int sat_max,
                        const float* sx_, const float* sy_, const int* sj, const float* sv) {
    ClsGrid g;
    const long long o = (long long)n * M;
    g.x = sx_ + o;
    g.y = sy_ + o;
    g.j = sj + o;
    g.v = sv + o * cp;
    g.sat = sat + (long long)n * sat_max;
    g.x0 = geo[4 * n + 0];
    g.y0 = geo[4 * n + 1];
    g.sx = geo[4 * n + 2];
    g.sy = geo[4 * n + 3];
    g.inv_sx = 1.f / g.sx;
    g.inv_sy = 1.f / g.sy;
    g.gx = dims[2 * n];
    g.gy = dims[2 * n + 1];
    g.m = M;
    return g;
}

// The cells met by the square of half-width h around (qx, qy): columns c0..c1, bands r0..r1.
struct ClsSquare {
    int c0, c1, r0, r1;
};

CLS_HD ClsSquare cls_square(const ClsGrid& g, float qx, float qy, float h) {
    ClsSquare s;
    if (!(qx > -1e30f && qx < 1e30f && qy > -1e30f && qy < 1e30f && h < 1e30f)) {
        // a non-finite query (device pointers are not checked) or an endless search: the whole grid,
        // so every loop ends; NaN in, NaN out, as the dense kernel
        s.c0 = 0;
        s.c1 = g.gx - 1;
        s.r0 = 0;
        s.r1 = g.gy - 1;
        return s;
    }
    s.c0 = cls_cell(qx - h - CLS_EPS, g.x0, g.inv_sx, g.gx);
    s.c1 = cls_cell(qx + h + CLS_EPS, g.x0, g.inv_sx, g.gx);
    s.r0 = cls_cell(qy - h - CLS_EPS, g.y0, g.inv_sy, g.gy);
    s.r1 = cls_cell(qy + h + CLS_EPS, g.y0, g.inv_sy, g.gy);
    return s;
}

CLS_HD int cls_square_count(const ClsGrid& g, const ClsSquare& s) {
    const int w = g.gx + 1;
    return g.sat[(s.r1 + 1) * w + s.c1 + 1] - g.sat[s.r0 * w + s.c1 + 1] - g.sat[(s.r1 + 1) * w + s.c0] +
           g.sat[s.r0 * w + s.c0];
}

// Visit, through f(pos), every pixel in the cells of `now` that are not in `was` (was.r0 > was.r1:
// none were); returns how many.
template <typename F>
CLS_HD int cls_visit_ring(const ClsGrid& g, const ClsSquare& was, const ClsSquare& now, F& f) {
    int count = 0;
    const bool had = was.r0 <= was.r1;
    for (int r = now.r0; r <= now.r1; ++r) {
        int spans[2][2];
        int ns = 0;
        if (had && r >= was.r0 && r <= was.r1) {
            if (now.c0 < was.c0) { spans[ns][0] = now.c0; spans[ns][1] = was.c0 - 1; ++ns; }
            if (now.c1 > was.c1) { spans[ns][0] = was.c1 + 1; spans[ns][1] = now.c1; ++ns; }
        } else {
            spans[ns][0] = now.c0; spans[ns][1] = now.c1; ++ns;
        }
        for (int t = 0; t < ns; ++t) {
            const int a = cls_start(g.sat, g.gx, r, spans[t][0]), b = cls_start(g.sat, g.gx, r, spans[t][1] + 1);
            for (int p = a; p < b; ++p) f(p);
            count += b - a;
        }
    }
    return count;
}

// Shell radii of the tail bound, h - margin + OFFSET * tau, and exp(-OFFSET) (as grid.py).
CLS_HD float cls_offset(int i) {
    const float o[8] = {0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.5f, 7.0f, 10.0f};
    return o[i];
}

// Bound on the sum, over the pixels not evaluated (all farther than h), of exp(-(d - d0)/tau) with
// the logit floor; n_eval pixels (those of the cells the square of half-width h meets) were.
CLS_HD float cls_tail_bound(const ClsGrid& g, float qx, float qy, float h, int n_eval, float d0, float tau) {
    const int u = g.m - n_eval;
    if (u == 0) return 0.f;
    const float r0 = h - CLS_DIST_MARGIN;
    const float e0 = cls_exp((d0 - r0) / tau);
    float e_prev = e0, t = 0.f;
    for (int i = 0; i < 8; ++i) {
        const float r = r0 + cls_offset(i) * tau;
        const int f = cls_square_count(g, cls_square(g, qx, qy, r > h ? r : h)) - n_eval;
        if (f >= u) return t + u * e_prev + u * CLS_LOGIT_FLOOR_WEIGHT;
        const float e_next = e0 * cls_exp(-cls_offset(i));
        t += f * (e_prev - e_next);
        e_prev = e_next;
    }
    return t + u * e_prev + u * CLS_LOGIT_FLOOR_WEIGHT;
}

template <int CMAX>
CLS_HD void cls_write(const float* p, float* P, int* labels, int n, int i, int HWq, int C) {
    int best = 0;
    float best_v = p[0];
    for (int c = 0; c < CMAX; ++c) {
        if (c < C) {
            P[((long long)n * C + c) * HWq + i] = p[c];
            if (p[c] > best_v) {  // strict: first maximum on ties
                best_v = p[c];
                best = c;
            }
        }
    }
    labels[(long long)n * HWq + i] = best;
}

template <int CMAX>
struct ClsSoftAcc {  // online softmax over visited pixels (corr_lookup.cu's soft, per pixel)
    const ClsGrid* g;
    float qx, qy, scale, gap, m, m_lower, s, dmin;
    float acc[CMAX];
    CLS_MEMBER void operator()(int p) {
        const float dx = qx - g->x[p], dy = qy - g->y[p];
        const float d = cls_sqrt(cls_fma(dy, dy, dx * dx));
        const float* v = g->v + (long long)p * CMAX;
        dmin = d < dmin ? d : dmin;
        if (d < m_lower) {
            const float f = cls_exp2((d - m) * scale);  // 0 when m = +inf
            s = cls_fma(s, f, 1.f);
            for (int c = 0; c < CMAX; ++c) acc[c] = cls_fma(acc[c], f, v[c]);
            m = d;
            m_lower = d - gap;
        } else {
            const float w = cls_exp2((m - d) * scale);
            s += w;
            for (int c = 0; c < CMAX; ++c) acc[c] = cls_fma(w, v[c], acc[c]);
        }
    }
};

// The first half-width tried: a little more than a cell, so the first ring is small.
CLS_HD float cls_first_h(const ClsGrid& g) { return 0.75f * (g.sx + g.sy); }

// Each mode: the query (qx, qy) of grid g -> out[CMAX]; returns the pixels it evaluated.
template <int CMAX>
CLS_HD int cls_soft(const ClsGrid& g, float qx, float qy, float tau, float tol, float* out) {
    // (aggregate initialisation: s and acc start at zero)
    ClsSoftAcc<CMAX> a = {&g, qx, qy, 1.4426950408889634f / tau, CLS_RESCALE * tau, CLS_INF, CLS_INF, 0.f, CLS_INF};
    ClsSquare was = {0, -1, 0, -1};
    float h = cls_first_h(g);
    ClsSquare now = cls_square(g, qx, qy, h);
    int n_eval = cls_visit_ring(g, was, now, a);
    while (n_eval < g.m) {  // (every pixel evaluated: exact, done, whatever the bound says, even NaN)
        if (!(a.dmin <= h - CLS_DIST_MARGIN)) {  // the nearest pixel is not certain yet
            h *= 2.f;
        } else {
            // weight evaluated, relative to the nearest pixel (m - dmin is in [0, 20 tau))
            const float z = a.s * cls_exp((a.dmin - a.m) / tau);
            const float bound = cls_tail_bound(g, qx, qy, h, n_eval, a.dmin, tau);
            if (bound <= tol * z) break;
            if (!(z > 0.f && z < CLS_INF && bound < CLS_INF)) {  // NaN / inf from non-finite inputs:
                h = CLS_INF;                                       // evaluate everything (NaN out)
            } else {  // grow by the bound's shortfall; at least 0.1 %, so a tau below h's ulp cannot stall
                const float grow = cls_log(bound / (tol * z));
                const float step = tau * ((grow > 0.f ? grow : 0.f) + 0.3f);
                h = h + step > h * 1.001f ? h + step : h * 1.001f;
            }
        }
        was = now;
        now = cls_square(g, qx, qy, h);
        n_eval += cls_visit_ring(g, was, now, a);
    }
    const float inv = 1.f / a.s;
    for (int c = 0; c < CMAX; ++c) out[c] = a.acc[c] * inv;
    return n_eval;
}

template <int KMAX>
struct ClsNearest {  // the k best (d, j) so far, sorted (kept of them); hard is k = 1
    const ClsGrid* g;
    float qx, qy;
    int k, kept;
    float bd[KMAX];
    int bj[KMAX], bp[KMAX];
    CLS_MEMBER void operator()(int p) {
        const float dx = qx - g->x[p], dy = qy - g->y[p];
        const float d = cls_sqrt_rn(cls_fma(dy, dy, dx * dx));  // correctly rounded, as the reference
        const int j = g->j[p];
        if (kept == k && !(d < bd[k - 1] || (d == bd[k - 1] && j < bj[k - 1]))) return;
        int a = kept < k ? kept++ : k - 1;
        while (a > 0 && (bd[a - 1] > d || (bd[a - 1] == d && bj[a - 1] > j))) {
            bd[a] = bd[a - 1];
            bj[a] = bj[a - 1];
            bp[a] = bp[a - 1];
            --a;
        }
        bd[a] = d;
        bj[a] = j;
        bp[a] = p;
    }
};

// Grow until the k-th nearest is certain: closer than h, so every pixel as near (ties included) is in.
template <int KMAX>
CLS_HD int cls_nearest(const ClsGrid& g, ClsNearest<KMAX>& b) {
    ClsSquare was = {0, -1, 0, -1};
    float h = cls_first_h(g);
    ClsSquare now = cls_square(g, b.qx, b.qy, h);
    int n_eval = cls_visit_ring(g, was, now, b);
    while (n_eval < g.m && !(b.kept == b.k && b.bd[b.k - 1] <= h - CLS_DIST_MARGIN)) {
        h *= 2.f;
        was = now;
        now = cls_square(g, b.qx, b.qy, h);
        n_eval += cls_visit_ring(g, was, now, b);
    }
    return n_eval;
}

template <int CMAX>
CLS_HD int cls_hard(const ClsGrid& g, float qx, float qy, float tau, float tol, float* out) {
    (void)tau;
    (void)tol;
    ClsNearest<1> b = {&g, qx, qy, 1, 0};
    const int n_eval = cls_nearest(g, b);
    for (int c = 0; c < CMAX; ++c) out[c] = g.v[(long long)b.bp[0] * CMAX + c];
    return n_eval;
}

// topk: k arrives in tol's place, as a float (the entry points share one signature)
template <int CMAX>
CLS_HD int cls_topk(const ClsGrid& g, float qx, float qy, float tau, float k_as_float, float* out) {
    ClsNearest<CLS_TOPK_MAX> b = {&g, qx, qy, (int)k_as_float, 0};
    const int n_eval = cls_nearest(g, b);
    // softmax over the kept pixels with the max logit subtracted, as corr_lookup.cu's topk
    for (int c = 0; c < CMAX; ++c) out[c] = 0.f;
    float s = 0.f;
    for (int a = 0; a < b.k; ++a) {
        const float w = cls_exp((b.bd[a] - b.bd[0]) / -tau);
        const float* v = g.v + (long long)b.bp[a] * CMAX;
        s += w;
        for (int c = 0; c < CMAX; ++c) out[c] = cls_fma(w, v[c], out[c]);
    }
    const float inv = 1.f / s;
    for (int c = 0; c < CMAX; ++c) out[c] *= inv;
    return n_eval;
}

// Entry points cls_<mode>_c<CMAX>(count = HWq, items = N, Q, HWq, M, C, geo, dims, sat, sat_max, sx_, sy_, sj,
// sv, tau, tol (topk: k), P, labels, pairs): pairs[n] (64-bit) += pixels evaluated (pairs may be null: then
// nothing is counted, and no thread waits on that atomic).
#define CLS_LOOKUP_PARAMS                                                                              \
    const float *Q, int HWq, int M, int C, const float *geo, const int *dims, const int *sat, int sat_max, \
        const float *sx_, const float *sy_, const int *sj, const float *sv, float tau, float tol, float *P, \
        int *labels, unsigned long long *pairs
#define CLS_LOOKUP_ARGS Q, HWq, M, C, geo, dims, sat, sat_max, sx_, sy_, sj, sv, tau, tol, P, labels, pairs

// One thread: item n's grid and query idx, the mode's result written out (P, labels), pairs counted.
#define CLS_MODE(MODE, CMAX)                                                                          \
    CLS_HD void cls_##MODE##_c##CMAX##_body(int idx, int n, CLS_LOOKUP_PARAMS) {                      \
        const ClsGrid g = cls_grid(n, M, CMAX, geo, dims, sat, sat_max, sx_, sy_, sj, sv);            \
        float out[CMAX];                                                                              \
        const int n_eval = cls_##MODE<CMAX>(g, Q[((long long)n * 2) * HWq + idx],                     \
                                            Q[((long long)n * 2 + 1) * HWq + idx], tau, tol, out);    \
        cls_write<CMAX>(out, P, labels, n, idx, HWq, C);                                              \
        if (pairs) cls_atomic_add64(&pairs[n], (unsigned long long)n_eval);                           \
    }                                                                                                 \
    CLS_KERNEL(cls_##MODE##_c##CMAX, (CLS_LOOKUP_PARAMS), (CLS_LOOKUP_ARGS))

#define CLS_MODES(CMAX) CLS_MODE(soft, CMAX) CLS_MODE(hard, CMAX) CLS_MODE(topk, CMAX)

CLS_MODES(1)
CLS_MODES(2)
CLS_MODES(4)
CLS_MODES(8)
CLS_MODES(16)
CLS_MODES(32)
CLS_MODES(64)
