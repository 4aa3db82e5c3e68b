"""The torch reference of CoordGAN's correspondence lookup: the implementation every faster path is
tested against, and the canonical coordinate grid.

The op (inputs, modes, tie rules, the stable softmax) is written down in ``runtime.lookup.spec``;
:func:`lookup` computes it in plain PyTorch, chunked over query pixels so the (HqWq x M) affinity
matrix never exists whole (at 128x128 it would hold 268M entries). Its ``impl=`` runs the same op
through the runtime's paths instead (the sparse numpy one on the CPU, the fused CUDA kernel on a
GPU, on torch's current stream), with the same checks and outputs. :func:`lookup_published` keeps
the published evaluation's one-shot formulation as the benchmark baseline.
"""

from __future__ import annotations

import torch

from runtime.errors import CoordGANError
from runtime.lookup import choose_impl, cuda_available, spec

__all__ = ["canonical_grid", "lookup", "lookup_published", "IMPLS"]

IMPLS = ("reference",) + spec.IMPLS


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
# Input validation: the spec's rules, with statistics computed in torch.


def check_tensor(name: str, t: object, layout: str, rank: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise CoordGANError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}.")
    spec.check_rank(name, tuple(t.shape), layout, rank)
    if t.is_complex():
        raise CoordGANError(f"{name} must be a real tensor, got {t.dtype}.")
    return t


def check_coords(name: str, t: torch.Tensor) -> torch.Tensor:
    """Float32 copy/view of a correspondence map after checking it is one."""
    floating = t.is_floating_point()
    f = t.float() if floating else t
    finite = bool(torch.isfinite(f).all()) if floating else True
    peak = float(f.abs().max()) if floating and finite else 0.0
    spec.check_coord_values(name, floating=floating, finite=finite, peak=peak, dtype=t.dtype, kind="tensor")
    return f


def _check_probs(name: str, t: torch.Tensor) -> torch.Tensor:
    t = t.float()  # bool / integer one-hot masks are welcome too
    finite = bool(torch.isfinite(t).all())
    spec.check_prob_values(name, finite=finite, low=float(t.min()) if finite else 0.0)
    return t


def _validate(query: object, ref_maps: object, ref_probs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes, devices and values; return float32 Q, K, V."""
    q = check_tensor("query", query, spec.QUERY_LAYOUT, 4)
    k = check_tensor("ref_maps", ref_maps, spec.REF_MAPS_LAYOUT, 5)
    v = check_tensor("ref_probs", ref_probs, spec.REF_PROBS_LAYOUT, 5)
    spec.check_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    if not (q.device == k.device == v.device):
        raise CoordGANError(
            f"query, ref_maps and ref_probs must be on one device, got {q.device}, {k.device} and {v.device}."
        )
    return check_coords("query", q), check_coords("ref_maps", k), _check_probs("ref_probs", v)


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


def distances(q: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
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


def _reference(q, kmap, v, tau: float, mode: str, k: int | None, chunk_size: int):
    n, r, _, hk, wk = kmap.shape
    hq, wq = q.shape[2], q.shape[3]
    qf, kf, vf = _flatten(q, kmap, v)
    kx = kf[..., 0].unsqueeze(1)  # (N, 1, M): broadcast against (N, c, 1) query columns
    ky = kf[..., 1].unsqueeze(1)
    c = vf.shape[-1]
    out = torch.empty(n, hq * wq, c, dtype=torch.float32, device=q.device)
    step = max(1, chunk_size // n)
    for start in range(0, hq * wq, step):
        qc = qf[:, start : start + step]
        d = distances(qc, kx, ky)
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


def _on_cpu_path(q, kmap, v, tau: float, mode: str, k: int | None, impl: str):
    """The runtime's numpy path on host copies, results back as tensors."""
    from runtime.lookup import lookup as runtime_lookup

    p, labels = runtime_lookup(q.numpy(), kmap.numpy(), v.numpy(), tau=tau, mode=mode, k=k, impl=impl)
    return torch.from_numpy(p), torch.from_numpy(labels)


def _on_cuda_kernel(q, kmap, v, tau: float, mode: str, k: int | None, sparse: bool = False):
    """The fused (or the sparse) kernel on the tensors' memory, launched on torch's current stream
    (nothing copied; the sparse one neglects at most 1e-4 of each query's softmax mass)."""
    if sparse:
        from runtime.lookup import cuda_sparse as kernel  # cuda-python, imported only here
    else:
        from runtime.lookup import cuda as kernel

    n, r, c, hk, wk = v.shape
    q, kmap, v = (t.contiguous() for t in (q, kmap, v))
    hq, wq = q.shape[2], q.shape[3]
    p = torch.empty(n, c, hq, wq, dtype=torch.float32, device=q.device)
    labels = torch.empty(n, hq, wq, dtype=torch.int32, device=q.device)
    with torch.cuda.device(q.device):
        dtype = {} if sparse else {"dtype": "float32"}  # (the sparse kernel takes float32 only)
        kernel.lookup_device(q.data_ptr(), kmap.data_ptr(), v.data_ptr(), p.data_ptr(), labels.data_ptr(), n=n,
                            hq=hq, wq=wq, r=r, hk=hk, wk=wk, c=c, tau=tau, mode=mode, k=k,
                            stream=torch.cuda.current_stream().cuda_stream, **dtype)
    return p, labels


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
    impl: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagate label probabilities from reference pixels to query pixels by coordinate distance.

    Args:
        query: Q (N, 2, Hq, Wq), correspondence maps in [-1, 1] (float16/bfloat16/float32/float64).
        ref_maps: K (N, R, 2, Hk, Wk), correspondence maps of the R references of each item.
        ref_probs: V (N, R, C, Hk, Wk), label probabilities (>= 0; bool/int one-hot accepted).
        tau: softmax temperature on the (unsquared) L2 distance; the paper uses 0.01.
        mode: "soft" (all reference pixels), "hard" (nearest one) or "topk" (k nearest).
        k: number of nearest reference pixels for mode="topk" (1 <= k <= R*Hk*Wk); None otherwise.
        chunk_size: reference path: query pixels per step, counted over the whole batch (each step
            takes max(1, chunk_size // N) pixels of every item), ~chunk_size x R*Hk*Wk floats at once.
        impl: "reference" (this module, torch, any device); or a path of ``runtime.lookup``: "dense"
            or "sparse" (numpy, CPU tensors), "cuda" (the fused kernel on CUDA tensors: P within 1e-4
            of the reference, topk keeps at most 64 neighbours; needs cuda-python), "cuda-sparse" (the
            sparse GPU kernel on CUDA tensors: sparse's bound, 1e-4 of the softmax mass), "auto" (cuda on
            CUDA tensors where the kernel runs them, else the reference; sparse on CPU ones).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32 = argmax over C (first max on ties),
        on the inputs' device. Computed in float32; not differentiable.

    Raises:
        CoordGANError: on wrong shapes/devices, a bad mode/k/tau/chunk_size/impl, NaN/Inf in any
            input, coordinates outside [-1, 1] or negative probabilities.
    """
    if mode not in spec.MODES:
        spec.check_mode(mode, k, 1)
    tau = spec.check_tau(tau)
    chunk_size = spec.check_positive_int("chunk_size", chunk_size)
    if impl not in IMPLS:
        raise CoordGANError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}.")
    q, kmap, v = _validate(query, ref_maps, ref_probs)
    n, r, c, hk, wk = v.shape
    k = spec.check_mode(mode, k, r * hk * wk)
    if impl == "auto" and q.is_cuda and (spec.kernel_limit(c, mode, k) or not cuda_available()):
        impl = "reference"  # what the kernel cannot run (C or k > 64, no cuda-python), torch can
    if impl == "reference":
        return _reference(q, kmap, v, tau, mode, k, chunk_size)
    chosen = choose_impl(impl, classes=c, mode=mode, k=k, on_gpu=q.is_cuda)
    if chosen in ("cuda", "cuda-sparse"):
        return _on_cuda_kernel(q, kmap, v, tau, mode, k, sparse=chosen == "cuda-sparse")
    return _on_cpu_path(q, kmap, v, tau, mode, k, chosen)


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
    tau = spec.check_tau(tau)
    q, kmap, v = _validate(query, ref_maps, ref_probs)
    qf, kf, vf = _flatten(q, kmap, v)
    dist = torch.norm(qf.unsqueeze(2) - kf.unsqueeze(1), dim=3)
    affinity = torch.softmax(-dist / tau, dim=2)
    p_flat = torch.einsum("nim,nmc->nic", affinity, vf)
    return _finish(p_flat, q.shape[2], q.shape[3])
