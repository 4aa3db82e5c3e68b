"""Reference (PyTorch) implementation of CoordGAN's correspondence lookup, plus the Chamfer distance.

This module *defines* the semantics of the correspondence lookup op. Every faster path (the numpy CPU
dense/sparse lookups in ``runtime/``, the fused CUDA kernel and its TensorRT plugin in ``export/``)
must match :func:`lookup` and is tested against it.

Inputs
    query     Q  (N, 2, Hq, Wq)       correspondence maps of the frames to label (x, y in [-1, 1])
    ref_maps  K  (N, R, 2, Hk, Wk)    correspondence maps of R reference frames per batch item
    ref_probs V  (N, R, C, Hk, Wk)    label probabilities (any values >= 0, e.g. one-hot) of those frames

Reference pixels are flattened in the order ``j = (r, y, x)`` row-major, so ``M = R * Hk * Wk``;
query pixels ``i = (y, x)`` row-major. With ``d_ij = ||Q[n, :, i] - K[n, :, j]||_2`` (L2 distance,
*not* squared, computed from direct coordinate differences in float32):

    soft   P[n, :, i] = sum_j softmax_j(-d_ij / tau) * V[n, :, j]          (sum over all M pixels)
    hard   P[n, :, i] = V[n, :, j*],  j* = argmin_j d_ij                   (lowest j on exact ties)
    topk   the soft formula restricted to the k nearest j of each query    (ties broken by lower j)

``labels[n, i] = argmax_c P[n, c, i]`` (first maximum on ties), int32. ``P`` is float32 whatever the
input dtype. ``topk`` with ``k = M`` equals ``soft``; ``topk`` with ``k = 1`` equals ``hard``.

The softmax is evaluated stably as ``w_ij = exp((d_min,i - d_ij) / tau)``, ``P = sum_j w_ij V_j /
sum_j w_ij`` (``d_min`` is the max logit), and the work is chunked over query pixels so the
(HqWq x M) affinity matrix is never materialised at once (at 128x128 it would hold 268M entries).

The published evaluation (NVlabs/CoordGAN ``eval_corr.py``) uses the soft mode with ``tau = 0.01``;
:func:`lookup_published` keeps its one-shot formulation as the benchmark baseline.
"""

from __future__ import annotations

import torch

from runtime.errors import CoordGANError
from runtime.lookup.cpu import as_int, check_mode, check_tau  # one set of argument rules for every lookup path

__all__ = ["MODES", "canonical_grid", "lookup", "lookup_fused", "lookup_published", "chamfer_distance", "soft_warp"]

MODES = ("soft", "hard", "topk")

# Correspondence maps come out of tanh; allow a little slack for float16 rounding and resampling.
_COORD_LIMIT = 1.0 + 1e-3


def canonical_grid(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The canonical coordinate frame of CoordGAN, shape (2, height, width).

    Channel 0 is x = ``linspace(-1, 1, width)`` varying along width, channel 1 is y =
    ``linspace(-1, 1, height)`` varying along height (the published ``convert_to_coord_format``,
    which is only right for square grids; this one is right for any shape).
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CoordGANError(f"canonical_grid needs a positive integer {name}, got {value!r}.")
    x = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype).view(1, width).expand(height, width)
    y = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype).view(height, 1).expand(height, width)
    return torch.stack((x, y), dim=0)


# --------------------------------------------------------------------------------------------------
# Input validation: every error a caller can cause becomes one CoordGANError sentence.


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_tensor(name: str, t: object, layout: str, rank: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise CoordGANError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}.")
    if t.dim() != rank:
        raise CoordGANError(f"{name} must have shape {layout}, got {_shape(t)}.")
    if t.numel() == 0:
        raise CoordGANError(f"{name} has an empty dimension (shape {_shape(t)}); every size must be at least 1.")
    if t.is_complex():
        raise CoordGANError(f"{name} must be a real tensor, got {t.dtype}.")
    return t


def _check_coords(name: str, t: torch.Tensor) -> torch.Tensor:
    """Float32 copy/view of a correspondence map after checking it is one."""
    if not t.is_floating_point():
        raise CoordGANError(f"{name} must be a floating-point tensor of coordinates, got {t.dtype}.")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise CoordGANError(f"{name} contains NaN or Inf.")
    peak = float(t.abs().max())
    if peak > _COORD_LIMIT:
        raise CoordGANError(
            f"{name} has coordinates outside [-1, 1] (largest magnitude {peak:.4g}), so it is not a "
            "correspondence map (those come from tanh)."
        )
    return t


def _check_probs(name: str, t: torch.Tensor) -> torch.Tensor:
    t = t.float()  # bool / integer one-hot masks are welcome too
    if not bool(torch.isfinite(t).all()):
        raise CoordGANError(f"{name} contains NaN or Inf.")
    low = float(t.min())
    if low < 0:
        raise CoordGANError(f"{name} contains negative values (min {low:.4g}); label probabilities must be >= 0.")
    return t


def _check_positive_int(name: str, value: object) -> int:
    number = as_int(value)
    if number is None or number < 1:
        raise CoordGANError(f"{name} must be a positive integer, got {value!r}.")
    return number


def _validate(
    query: object, ref_maps: object, ref_probs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes, devices and values; return float32 Q, K, V."""
    q = _check_tensor("query", query, "(N, 2, Hq, Wq)", 4)
    k = _check_tensor("ref_maps", ref_maps, "(N, R, 2, Hk, Wk)", 5)
    v = _check_tensor("ref_probs", ref_probs, "(N, R, C, Hk, Wk)", 5)
    if q.shape[1] != 2:
        raise CoordGANError(f"query must have shape (N, 2, Hq, Wq) with 2 coordinate channels, got {_shape(q)}.")
    n = q.shape[0]
    expected_k = (n, k.shape[1], 2, k.shape[3], k.shape[4])
    if tuple(k.shape) != expected_k:
        raise CoordGANError(
            f"ref_maps must have shape (N, R, 2, Hk, Wk) = {tuple(expected_k)} to match query, got {_shape(k)}."
        )
    expected_v = (n, k.shape[1], v.shape[2], k.shape[3], k.shape[4])
    if tuple(v.shape) != expected_v:
        raise CoordGANError(
            f"ref_probs must have shape (N, R, C, Hk, Wk) = {tuple(expected_v)} to match ref_maps, got {_shape(v)}."
        )
    if not (q.device == k.device == v.device):
        raise CoordGANError(
            f"query, ref_maps and ref_probs must be on one device, got {q.device}, {k.device} and {v.device}."
        )
    return _check_coords("query", q), _check_coords("ref_maps", k), _check_probs("ref_probs", v)


def _flatten(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q -> (N, HqWq, 2); K -> (N, M, 2) and V -> (N, M, C) with reference order j = (r, y, x)."""
    n, r, c, hk, wk = v.shape
    qf = q.flatten(2).transpose(1, 2)
    kf = k.permute(0, 1, 3, 4, 2).reshape(n, r * hk * wk, 2)
    vf = v.permute(0, 1, 3, 4, 2).reshape(n, r * hk * wk, c)
    return qf, kf, vf


def _finish(p_flat: torch.Tensor, hq: int, wq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, HqWq, C) probabilities -> P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32."""
    n, _, c = p_flat.shape
    labels = p_flat.argmax(dim=-1).to(torch.int32).reshape(n, hq, wq)  # first maximum on ties
    p = p_flat.transpose(1, 2).reshape(n, c, hq, wq).contiguous()
    return p, labels


# --------------------------------------------------------------------------------------------------
# The op.


def _distances(q: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """L2 distances (N, c, M) from direct differences: sqrt(dx*dx + dy*dy).

    Direct differences, not |q|^2 + |k|^2 - 2 q.k: with tau = 0.01 the logits amplify distance
    errors 100x, and the expanded form loses ~1e-4 to cancellation near d = 0. In-place ops keep
    the working set at two (N, c, M) buffers.
    """
    d = q[..., 0:1] - kx
    d.mul_(d)
    dy = q[..., 1:2] - ky
    d.addcmul_(dy, dy)
    del dy
    return d.sqrt_()


def _topk_mask(d: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k nearest reference pixels per query, ties broken by lower j.

    torch.topk does not promise which of several equal values it returns, so: keep every pixel
    strictly closer than the k-th distance, then the lowest-j pixels at exactly that distance.
    """
    kth = d.topk(k, dim=-1, largest=False, sorted=False).values.amax(dim=-1, keepdim=True)
    closer = d < kth
    at_kth = d == kth
    room = k - closer.sum(dim=-1, keepdim=True, dtype=torch.int32)
    rank_at_kth = at_kth.to(torch.int32).cumsum(dim=-1, dtype=torch.int32)
    return closer | (at_kth & (rank_at_kth <= room))


@torch.no_grad()  # an inference op: autograd through chunks would keep the full matrix alive anyway
def lookup(
    query: torch.Tensor,
    ref_maps: torch.Tensor,
    ref_probs: torch.Tensor,
    *,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagate label probabilities from reference pixels to query pixels by coordinate distance.

    Args:
        query: Q (N, 2, Hq, Wq), correspondence maps in [-1, 1] (float16/bfloat16/float32/float64).
        ref_maps: K (N, R, 2, Hk, Wk), correspondence maps of the R references of each item.
        ref_probs: V (N, R, C, Hk, Wk), label probabilities (>= 0; bool/int one-hot accepted).
        tau: softmax temperature on the (unsquared) L2 distance; the paper uses 0.01.
        mode: "soft" (all reference pixels), "hard" (nearest one) or "topk" (k nearest).
        k: number of nearest reference pixels for mode="topk" (1 <= k <= R*Hk*Wk); None otherwise.
        chunk_size: query pixels per step, counted over the whole batch (each step takes
            max(1, chunk_size // N) pixels of every item), so a step holds ~chunk_size x R*Hk*Wk floats.

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32 = argmax over C (first max on ties),
        on the inputs' device. Computed in float32; not differentiable.

    Raises:
        CoordGANError: on wrong shapes/devices, a bad mode/k/tau/chunk_size, NaN/Inf in any
            input, coordinates outside [-1, 1] or negative probabilities.
    """
    if mode not in MODES:
        raise CoordGANError(f"mode must be one of 'soft', 'hard' or 'topk', got {mode!r}.")
    tau = check_tau(tau)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    q, kmap, v = _validate(query, ref_maps, ref_probs)
    n, r, _, hk, wk = kmap.shape
    k = check_mode(mode, k, r * hk * wk)

    hq, wq = q.shape[2], q.shape[3]
    qf, kf, vf = _flatten(q, kmap, v)
    kx = kf[..., 0].unsqueeze(1)  # (N, 1, M): broadcast against (N, c, 1) query columns
    ky = kf[..., 1].unsqueeze(1)
    c = vf.shape[-1]
    out = torch.empty(n, hq * wq, c, dtype=torch.float32, device=q.device)
    step = max(1, chunk_size // n)
    for start in range(0, hq * wq, step):
        qc = qf[:, start : start + step]
        d = _distances(qc, kx, ky)
        if mode == "hard":
            nearest = d.argmin(dim=-1, keepdim=True)  # first minimum = lowest j on ties
            out[:, start : start + step] = vf.gather(1, nearest.expand(-1, -1, c))
            continue
        keep = _topk_mask(d, k) if mode == "topk" else None
        # softmax(-d/tau) with the max logit (-d_min/tau) subtracted: w = exp((d_min - d)/tau) in (0, 1].
        d_min = d.amin(dim=-1, keepdim=True)
        w = d.sub_(d_min).div_(-tau).exp_()
        if keep is not None:
            w.masked_fill_(~keep, 0.0)
        out[:, start : start + step] = torch.bmm(w, vf).div_(w.sum(dim=-1, keepdim=True))
    return _finish(out, hq, wq)


@torch.no_grad()
def lookup_fused(
    query: torch.Tensor,
    ref_maps: torch.Tensor,
    ref_probs: torch.Tensor,
    *,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lookup` through the fused CUDA kernel (runtime.lookup.cuda) on CUDA tensors.

    Same arguments, checks and outputs as :func:`lookup` (P within 1e-4 of it: the kernel's
    approximate sqrt/exp); launched on torch's current stream, nothing copied to the host. topk
    keeps at most 64 neighbours here. Needs cuda-python.
    """
    if mode not in MODES:
        raise CoordGANError(f"mode must be one of 'soft', 'hard' or 'topk', got {mode!r}.")
    tau = check_tau(tau)
    q, kmap, v = _validate(query, ref_maps, ref_probs)
    if not q.is_cuda:
        raise CoordGANError("lookup_fused runs the CUDA kernel and needs CUDA tensors; use lookup() on the CPU.")
    n, r, c, hk, wk = v.shape
    k = check_mode(mode, k, r * hk * wk)
    from runtime.lookup import cuda as fused  # cuda-python, imported only here

    q, kmap, v = (t.contiguous() for t in (q, kmap, v))
    hq, wq = q.shape[2], q.shape[3]
    p = torch.empty(n, c, hq, wq, dtype=torch.float32, device=q.device)
    labels = torch.empty(n, hq, wq, dtype=torch.int32, device=q.device)
    with torch.cuda.device(q.device):
        fused.lookup_device(q.data_ptr(), kmap.data_ptr(), v.data_ptr(), p.data_ptr(), labels.data_ptr(), n=n,
                            hq=hq, wq=wq, r=r, hk=hk, wk=wk, c=c, dtype="float32", tau=tau, mode=mode, k=k,
                            stream=torch.cuda.current_stream().cuda_stream)
    return p, labels


@torch.no_grad()
def lookup_published(
    query: torch.Tensor, ref_maps: torch.Tensor, ref_probs: torch.Tensor, *, tau: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """The published evaluation's soft lookup, kept as the benchmark baseline.

    Same result as ``lookup(mode="soft")``, computed the way NVlabs/CoordGAN's ``eval_corr.py`` does:
    all pairwise differences (N, HqWq, M, 2) at once, ``torch.norm``, softmax, einsum. Memory grows
    as HqWq x M x 2 floats (about 2 GiB per item at 128x128 with one reference); do not use it for
    real work.
    """
    tau = check_tau(tau)
    q, kmap, v = _validate(query, ref_maps, ref_probs)
    qf, kf, vf = _flatten(q, kmap, v)
    dist = torch.norm(qf.unsqueeze(2) - kf.unsqueeze(1), dim=3)
    affinity = torch.softmax(-dist / tau, dim=2)
    p_flat = torch.einsum("nim,nmc->nic", affinity, vf)
    return _finish(p_flat, q.shape[2], q.shape[3])


# --------------------------------------------------------------------------------------------------
# Chamfer distance (the CoordGAN warp Chamfer loss), without pytorch3d.


def _nearest(src: torch.Tensor, dst: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Index (N, P) of the nearest dst point for each src point; lowest index on ties."""
    n = src.shape[0]
    step = max(1, chunk_size // n)
    parts = []
    for start in range(0, src.shape[1], step):
        d = torch.cdist(src[:, start : start + step], dst, compute_mode="donot_use_mm_for_euclid_dist")
        parts.append(d.argmin(dim=-1))
    return torch.cat(parts, dim=1)


def _one_way(src: torch.Tensor, dst: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Mean over src of the squared distance to its nearest dst point, per batch item (N,)."""
    with torch.no_grad():
        idx = _nearest(src.detach(), dst.detach(), chunk_size)
    # Recompute only the chosen pairs with autograd: the gradient of a min is the gradient at its
    # argmin, and the graph stays O(P) instead of holding every (P x M) chunk.
    nearest = dst.gather(1, idx.unsqueeze(-1).expand(-1, -1, dst.shape[-1]))
    return (src - nearest).square().sum(dim=-1).mean(dim=1)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Symmetric Chamfer distance between point sets, averaged over the batch (a scalar).

    ``mean_p min_m |a_p - b_m|^2 + mean_m min_p |b_m - a_p|^2`` per item, then the mean over N:
    the default reductions of pytorch3d's ``chamfer_distance``, which the published warp loss uses.
    a (N, P, D) and b (N, M, D); differentiable in both. Nearest neighbours are searched in chunks of
    ``chunk_size`` points of the batch (~chunk_size x M distances at once). float16/bfloat16 inputs
    are computed in float32.
    """
    a = _check_tensor("a", a, "(N, P, D)", 3)
    b = _check_tensor("b", b, "(N, M, D)", 3)
    if b.shape[0] != a.shape[0] or b.shape[2] != a.shape[2]:
        raise CoordGANError(
            f"b must have shape (N, M, D) = ({a.shape[0]}, M, {a.shape[2]}) to match a, got {_shape(b)}."
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise CoordGANError(f"a and b must be floating-point tensors, got {a.dtype} and {b.dtype}.")
    if a.device != b.device:
        raise CoordGANError(f"a and b must be on one device, got {a.device} and {b.device}.")
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    return (_one_way(a, b, chunk_size) + _one_way(b, a, chunk_size)).mean()


# --------------------------------------------------------------------------------------------------
# Differentiable soft warp (the training-time warp loss).


class _SoftWarp(torch.autograd.Function):
    """out[n, i] = sum_j softmax_j(-||q_i - k_j|| / tau) v_j, chunked over queries in both passes.

    Flash-attention style: the forward keeps only the output and one log-sum-exp per query; the
    backward recomputes each chunk's distances and weights, so memory stays O(chunk x M) instead of
    the (P x M) affinity matrix that plain autograd would keep alive for every chunk.
    """

    @staticmethod
    def forward(ctx, q, k, v, tau: float, step: int):
        n, p, _ = q.shape
        kx, ky = k[..., 0].unsqueeze(1), k[..., 1].unsqueeze(1)
        out = q.new_empty(n, p, v.shape[-1])
        lse = q.new_empty(n, p)
        for s in range(0, p, step):
            logits = _distances(q[:, s : s + step], kx, ky).div_(-tau)
            top = logits.amax(dim=-1, keepdim=True)
            w = logits.sub_(top).exp_()
            z = w.sum(dim=-1, keepdim=True)
            out[:, s : s + step] = torch.bmm(w, v).div_(z)
            lse[:, s : s + step] = (top + z.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.tau, ctx.step = tau, step
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        tau, step = ctx.tau, ctx.step
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        kx, ky = k[..., 0].unsqueeze(1), k[..., 1].unsqueeze(1)
        gq = torch.zeros_like(q) if need_q else None
        gk = torch.zeros_like(k) if need_k else None
        gv = torch.zeros_like(v) if need_v else None
        for s in range(0, q.shape[1], step):
            qc, gc = q[:, s : s + step], grad_out[:, s : s + step]
            dx = qc[..., 0:1] - kx  # (N, c, M)
            dy = qc[..., 1:2] - ky
            d = torch.sqrt(dx * dx + dy * dy)
            w = (d / -tau).sub_(lse[:, s : s + step, None]).exp_()  # the forward's softmax weights
            if need_v:
                gv += torch.bmm(w.transpose(1, 2), gc)
            if not (need_q or need_k):
                continue
            # softmax backward: dL/dlogit_ij = w_ij (g_i . v_j - g_i . out_i); logit = -d / tau.
            g_logit = torch.bmm(gc, v.transpose(1, 2)).sub_((gc * out[:, s : s + step]).sum(-1, keepdim=True))
            g_logit.mul_(w)
            # dL/dd = -g_logit / tau; dd/dq = (q - k) / d, taken as 0 at d = 0 (coincident points).
            e = torch.where(d > 0, g_logit / (-tau * d.clamp_min(torch.finfo(d.dtype).tiny)), 0.0)
            ex, ey = e * dx, e * dy
            if need_q:
                gq[:, s : s + step, 0] = ex.sum(-1)
                gq[:, s : s + step, 1] = ey.sum(-1)
            if need_k:
                gk[..., 0] -= ex.sum(1)
                gk[..., 1] -= ey.sum(1)
        return gq, gk, gv, None, None


def soft_warp(
    query_map: torch.Tensor,
    ref_map: torch.Tensor,
    ref_values: torch.Tensor,
    tau: float = 0.01,
    *,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Differentiable soft lookup of per-pixel values: the warp of the CoordGAN warping loss.

    Same formula as ``lookup(mode="soft")`` with one reference per item, for any real values
    (images in [-1, 1], features): out[n, :, i] = sum_j softmax_j(-||Q[n,:,i] - K[n,:,j]||_2 / tau)
    V[n, :, j]. Gradients flow to all three inputs; memory is bounded by ``chunk_size`` query
    pixels (counted over the batch) x Hk*Wk, in the forward and the backward pass alike.

    Args:
        query_map: (N, 2, Hq, Wq) correspondence maps of the frames to render.
        ref_map: (N, 2, Hk, Wk) correspondence maps of the frames that give the values.
        ref_values: (N, C, Hk, Wk) values at the reference pixels (e.g. the reference image).
        tau: softmax temperature on the L2 distance (0.01 in the paper).

    Returns:
        (N, C, Hq, Wq) in float32 (float64 when an input is float64), computed outside autocast.
    """
    q = _check_tensor("query_map", query_map, "(N, 2, Hq, Wq)", 4)
    k = _check_tensor("ref_map", ref_map, "(N, 2, Hk, Wk)", 4)
    v = _check_tensor("ref_values", ref_values, "(N, C, Hk, Wk)", 4)
    n = q.shape[0]
    if q.shape[1] != 2 or tuple(k.shape[:2]) != (n, 2):
        raise CoordGANError(
            f"query_map and ref_map must have shapes (N, 2, H, W) with one N, got {_shape(q)} and {_shape(k)}."
        )
    if v.shape[0] != n or tuple(v.shape[2:]) != tuple(k.shape[2:]):
        raise CoordGANError(
            f"ref_values must have shape (N, C, Hk, Wk) = ({n}, C, {k.shape[2]}, {k.shape[3]}), got {_shape(v)}."
        )
    if not (q.device == k.device == v.device):
        raise CoordGANError(
            f"query_map, ref_map and ref_values must be on one device, got {q.device}, {k.device} and {v.device}."
        )
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise CoordGANError("query_map, ref_map and ref_values must be floating-point tensors.")
    tau = check_tau(tau)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    hq, wq = q.shape[2:]
    with torch.autocast(device_type=q.device.type, enabled=False):  # tau amplifies rounding 100x
        qf = q.to(dtype).flatten(2).transpose(1, 2).contiguous()
        kf = k.to(dtype).flatten(2).transpose(1, 2).contiguous()
        vf = v.to(dtype).flatten(2).transpose(1, 2).contiguous()
        out = _SoftWarp.apply(qf, kf, vf, tau, max(1, chunk_size // n))
    return out.transpose(1, 2).reshape(n, -1, hq, wq)
