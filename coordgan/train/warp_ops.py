"""Differentiable correspondence ops of the training losses: the Chamfer distance of the warp loss
and the soft warp of the texture-swap / warping losses (chunked, memory O(chunk x M) both ways).
Inference lookups are ``coordgan.correspondence``."""

from __future__ import annotations

import torch

from coordgan.correspondence import check_tensor, distances
from runtime.errors import CoordGANError
from runtime.lookup import spec

__all__ = ["chamfer_distance", "soft_warp"]


def default_chunk(device: torch.device, m: int) -> int:
    """Query points per chunk, counted over the batch, when the caller gives none (m: points each
    query is compared with). On a CPU 4096, cache-sized. On a GPU a chunk is a few kernel launches,
    so as large as 2^26 distances (256 MiB of float32 per temporary) allow: 65536 at 32 px, 4096 at
    128 px, 256 at 512 px."""
    return 4096 if device.type == "cpu" else max(1, (1 << 26) // max(1, m))


# --------------------------------------------------------------------------------------------------
# Chamfer distance (the CoordGAN warp Chamfer loss), without pytorch3d.


def _nearest(src: torch.Tensor, dst: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Index (N, P) of the nearest dst point for each src point; lowest index on ties.

    Squared distances summed coordinate by coordinate (pytorch3d's knn compares squared distances
    too): torch.cdist's exact mode is a generic kernel that took 89 % of a training step on an H200.
    """
    n = src.shape[0]
    step = max(1, chunk_size // n)
    parts = []
    for start in range(0, src.shape[1], step):
        chunk = src[:, start : start + step]
        d = (chunk[..., 0, None] - dst[..., 0].unsqueeze(1)).square_()  # (N, c, M)
        for k in range(1, src.shape[-1]):
            d.add_((chunk[..., k, None] - dst[..., k].unsqueeze(1)).square_())
        parts.append(d.argmin(dim=-1))  # the first minimum
    return torch.cat(parts, dim=1)


def _one_way(src: torch.Tensor, dst: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Mean over src of the squared distance to its nearest dst point, per batch item (N,)."""
    with torch.no_grad():
        idx = _nearest(src.detach(), dst.detach(), chunk_size)
    # Recompute only the chosen pairs with autograd: the gradient of a min is the gradient at its
    # argmin, and the graph stays O(P) instead of holding every (P x M) chunk.
    nearest = dst.gather(1, idx.unsqueeze(-1).expand(-1, -1, dst.shape[-1]))
    return (src - nearest).square().sum(dim=-1).mean(dim=1)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Symmetric Chamfer distance between point sets, averaged over the batch (a scalar).

    ``mean_p min_m |a_p - b_m|^2 + mean_m min_p |b_m - a_p|^2`` per item, then the mean over N:
    the default reductions of pytorch3d's ``chamfer_distance``, which the published warp loss uses.
    a (N, P, D) and b (N, M, D); differentiable in both. Nearest neighbours are searched in chunks of
    ``chunk_size`` points of the batch (~chunk_size x M distances at once; None: `default_chunk`).
    float16/bfloat16 inputs are computed in float32.
    """
    a = check_tensor("a", a, "(N, P, D)", 3)
    b = check_tensor("b", b, "(N, M, D)", 3)
    if b.shape[0] != a.shape[0] or b.shape[2] != a.shape[2]:
        raise CoordGANError(
            f"b must have shape (N, M, D) = ({a.shape[0]}, M, {a.shape[2]}) to match a, "
            f"got {spec.shape_text(b.shape)}."
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise CoordGANError(f"a and b must be floating-point tensors, got {a.dtype} and {b.dtype}.")
    if a.device != b.device:
        raise CoordGANError(f"a and b must be on one device, got {a.device} and {b.device}.")
    if chunk_size is None:
        chunk_size = default_chunk(a.device, max(a.shape[1], b.shape[1]))  # both directions
    chunk_size = spec.check_positive_int("chunk_size", chunk_size)
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
            logits = distances(q[:, s : s + step], kx, ky).div_(-tau)
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
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Differentiable soft lookup of per-pixel values: the warp of the CoordGAN warping loss.

    Same formula as ``lookup(mode="soft")`` with one reference per item, for any real values
    (images in [-1, 1], features): out[n, :, i] = sum_j softmax_j(-||Q[n,:,i] - K[n,:,j]||_2 / tau)
    V[n, :, j]. Gradients flow to all three inputs; memory is bounded by ``chunk_size`` query
    pixels (counted over the batch; None: `default_chunk`) x Hk*Wk, in the forward and the backward
    pass alike.

    Args:
        query_map: (N, 2, Hq, Wq) correspondence maps of the frames to render.
        ref_map: (N, 2, Hk, Wk) correspondence maps of the frames that give the values.
        ref_values: (N, C, Hk, Wk) values at the reference pixels (e.g. the reference image).
        tau: softmax temperature on the L2 distance (0.01 in the paper).

    Returns:
        (N, C, Hq, Wq) in float32 (float64 when an input is float64), computed outside autocast.
    """
    q = check_tensor("query_map", query_map, "(N, 2, Hq, Wq)", 4)
    k = check_tensor("ref_map", ref_map, "(N, 2, Hk, Wk)", 4)
    v = check_tensor("ref_values", ref_values, "(N, C, Hk, Wk)", 4)
    n = q.shape[0]
    if q.shape[1] != 2 or tuple(k.shape[:2]) != (n, 2):
        raise CoordGANError(
            f"query_map and ref_map must have shapes (N, 2, H, W) with one N, got {spec.shape_text(q.shape)} "
            f"and {spec.shape_text(k.shape)}."
        )
    if v.shape[0] != n or tuple(v.shape[2:]) != tuple(k.shape[2:]):
        raise CoordGANError(
            f"ref_values must have shape (N, C, Hk, Wk) = ({n}, C, {k.shape[2]}, {k.shape[3]}), "
            f"got {spec.shape_text(v.shape)}."
        )
    if not (q.device == k.device == v.device):
        raise CoordGANError(
            f"query_map, ref_map and ref_values must be on one device, got {q.device}, {k.device} and {v.device}."
        )
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise CoordGANError("query_map, ref_map and ref_values must be floating-point tensors.")
    tau = spec.check_tau(tau)
    if chunk_size is None:
        chunk_size = default_chunk(q.device, k.shape[2] * k.shape[3])
    chunk_size = spec.check_positive_int("chunk_size", chunk_size)
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    hq, wq = q.shape[2:]
    with torch.autocast(device_type=q.device.type, enabled=False):  # tau amplifies rounding 100x
        qf = q.to(dtype).flatten(2).transpose(1, 2).contiguous()
        kf = k.to(dtype).flatten(2).transpose(1, 2).contiguous()
        vf = v.to(dtype).flatten(2).transpose(1, 2).contiguous()
        out = _SoftWarp.apply(qf, kf, vf, tau, max(1, chunk_size // n))
    return out.transpose(1, 2).reshape(n, -1, hq, wq)
