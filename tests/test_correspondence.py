"""Tests of the reference correspondence lookup (coordgan/correspondence.py) and the Chamfer distance
(coordgan/train/warp_ops.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coordgan.correspondence import canonical_grid, lookup, lookup_published
from coordgan.train.warp_ops import chamfer_distance
from runtime.errors import CoordGANError


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(..., H, W) int labels -> (..., C, H, W) float32 one-hot."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, -3).float()


def _smooth_maps(gen: torch.Generator, *lead: int, h: int, w: int) -> torch.Tensor:
    """Random smooth correspondence-like maps (..., 2, h, w) in (-1, 1): a perturbed canonical grid."""
    grid = canonical_grid(h, w)
    coarse = torch.randn(math.prod(lead), 2, 3, 3, generator=gen)
    bump = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    return torch.tanh(1.5 * grid + 0.3 * bump).reshape(*lead, 2, h, w)


def _random_probs(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Random label probabilities (softmax over dim -3)."""
    return torch.softmax(2 * torch.randn(*shape, generator=gen), dim=-3)


def _brute_force(q, k, v, tau: float, mode: str, topk: int | None = None) -> np.ndarray:
    """The op's definition as an explicit float64 double loop over query and reference pixels."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    n, _, hq, wq = q.shape
    _, r, c, hk, wk = v.shape
    out = np.zeros((n, c, hq, wq))
    for b in range(n):
        refs = [(rr, y, x) for rr in range(r) for y in range(hk) for x in range(wk)]  # j = (r, y, x)
        for qy in range(hq):
            for qx in range(wq):
                dist = np.array(
                    [math.hypot(q[b, 0, qy, qx] - k[b, rr, 0, y, x], q[b, 1, qy, qx] - k[b, rr, 1, y, x])
                     for rr, y, x in refs]
                )
                if mode == "hard":
                    chosen = [int(np.argmin(dist))]
                elif mode == "topk":
                    chosen = sorted(range(len(refs)), key=lambda j: (dist[j], j))[:topk]
                else:
                    chosen = list(range(len(refs)))
                logits = -dist[chosen] / tau
                w = np.exp(logits - logits.max())
                w /= w.sum()
                for wj, j in zip(w, chosen):
                    rr, y, x = refs[j]
                    out[b, :, qy, qx] += wj * v[b, rr, :, y, x]
    return out


# ------------------------------------------------------------------------------------------ grid


def test_canonical_grid_layout():
    g = canonical_grid(3, 5)
    assert g.shape == (2, 3, 5) and g.dtype == torch.float32
    assert torch.equal(g[0], torch.linspace(-1, 1, 5).expand(3, 5))  # x along width
    assert torch.equal(g[1], torch.linspace(-1, 1, 3)[:, None].expand(3, 5))  # y along height
    assert canonical_grid(4, 4, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(CoordGANError, match="positive integer height"):
        canonical_grid(0, 4)


# ------------------------------------------------------------------------------------ semantics


def test_identity_warp_copies_labels():
    gen = torch.Generator().manual_seed(0)
    grid = canonical_grid(16, 16)
    labels = torch.randint(0, 5, (2, 16, 16), generator=gen)
    v = _one_hot(labels, 5)[:, None]  # (N, 1, C, H, W)
    q, k = grid.expand(2, 2, 16, 16), grid.expand(2, 1, 2, 16, 16)

    p, lab = lookup(q, k, v, tau=0.01)
    assert p.shape == (2, 5, 16, 16) and p.dtype == torch.float32
    assert lab.shape == (2, 16, 16) and lab.dtype == torch.int32
    assert torch.equal(lab, labels.int())
    torch.testing.assert_close(p.sum(1), torch.ones(2, 16, 16))

    p_hard, lab_hard = lookup(q, k, v, mode="hard")
    assert torch.equal(p_hard, v[:, 0])
    assert torch.equal(lab_hard, labels.int())


@pytest.mark.parametrize("shift", [(0, 2), (-3, 0), (1, -2)])
def test_known_shift_moves_labels(shift):
    dy, dx = shift
    h = w = 16
    grid = canonical_grid(h, w)
    ys = (torch.arange(h) + dy).clamp(0, h - 1)
    xs = (torch.arange(w) + dx).clamp(0, w - 1)
    ref = grid[:, ys][:, :, xs]  # reference pixel (y, x) sits at canonical pixel (y + dy, x + dx)
    labels = torch.randint(0, 7, (h, w), generator=torch.Generator().manual_seed(1))
    v = _one_hot(labels, 7)[None, None]
    for mode in ("soft", "hard"):
        _, lab = lookup(grid[None], ref[None, None], v, mode=mode)
        # so the query pixel (y + dy, x + dx) takes the label of reference pixel (y, x); edges clamp.
        inner = slice(3, h - 3)
        shifted = torch.roll(labels, shifts=(dy, dx), dims=(0, 1))
        assert torch.equal(lab[0, inner, inner], shifted[inner, inner].int()), mode


def test_hard_is_the_zero_temperature_limit_of_soft():
    gen = torch.Generator().manual_seed(2)
    q = _smooth_maps(gen, 2, h=12, w=12)
    k = _smooth_maps(gen, 2, 1, h=12, w=12)
    v = _random_probs(gen, 2, 1, 4, 12, 12)
    tau = 1e-4
    p_soft, _ = lookup(q, k, v, tau=tau)
    p_hard, _ = lookup(q, k, v, mode="hard")

    # Where the two nearest reference pixels are > 20 tau apart, soft weights are hard up to e^-20.
    qf = q.flatten(2).transpose(1, 2).double()
    kf = k[:, 0].flatten(2).transpose(1, 2).double()
    two = torch.cdist(qf, kf).topk(2, dim=-1, largest=False).values
    clear = ((two[..., 1] - two[..., 0]) > 20 * tau).reshape(2, 12, 12)
    assert clear.float().mean() > 0.9
    diff = (p_soft - p_hard).abs().amax(dim=1)
    assert diff[clear].max() < 1e-6
    assert diff.max() < 1.0  # and everywhere it is still a convex mix of nearby labels


def test_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(3)
    q = _smooth_maps(gen, 2, h=10, w=9)
    k = _smooth_maps(gen, 2, 2, h=8, w=7)
    v = _random_probs(gen, 2, 2, 5, 8, 7)
    for mode, kk in (("soft", None), ("hard", None), ("topk", 9)):
        for tau in (0.01, 0.3):
            big, big_lab = lookup(q, k, v, tau=tau, mode=mode, k=kk, chunk_size=10**9)
            for chunk in (1, 7, 64):
                small, small_lab = lookup(q, k, v, tau=tau, mode=mode, k=kk, chunk_size=chunk)
                torch.testing.assert_close(small, big, atol=1e-6, rtol=0)
                assert torch.equal(small_lab, big_lab)


def test_several_references_equal_their_concatenation():
    gen = torch.Generator().manual_seed(4)
    q = _smooth_maps(gen, 1, h=8, w=8)
    k = _smooth_maps(gen, 1, 3, h=6, w=5)
    v = _random_probs(gen, 1, 3, 4, 6, 5)
    # Soft sums over every reference pixel, so the order of references does not matter.
    k_cat = torch.cat(k.unbind(1), dim=-1)[:, None]  # (N, 1, 2, Hk, R*Wk)
    v_cat = torch.cat(v.unbind(1), dim=-1)[:, None]
    for tau in (0.01, 0.2):
        p, lab = lookup(q, k, v, tau=tau)
        p_cat, lab_cat = lookup(q, k_cat, v_cat, tau=tau)
        torch.testing.assert_close(p, p_cat, atol=1e-6, rtol=0)
        assert torch.equal(lab, lab_cat)
    # The nearest pixel is the same one, wherever it sits.
    assert torch.equal(lookup(q, k, v, mode="hard")[0], lookup(q, k_cat, v_cat, mode="hard")[0])


@pytest.mark.parametrize("mode,kk", [("soft", None), ("hard", None), ("topk", 1), ("topk", 5), ("topk", 30)])
@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_matches_float64_brute_force(mode, kk, tau):
    gen = torch.Generator().manual_seed(5)
    q = torch.rand(2, 2, 4, 4, generator=gen) * 2 - 1
    k = torch.rand(2, 2, 2, 3, 5, generator=gen) * 2 - 1
    v = _random_probs(gen, 2, 2, 3, 3, 5)
    p, lab = lookup(q, k, v, tau=tau, mode=mode, k=kk)
    expected = _brute_force(q, k, v, tau, mode, kk)
    np.testing.assert_allclose(p.numpy(), expected, atol=1e-5, rtol=0)
    assert np.array_equal(lab.numpy(), expected.argmax(axis=1))


@pytest.mark.parametrize("hq,wq,hk,wk", [(6, 10, 12, 5), (16, 16, 4, 4), (3, 7, 9, 2)])
def test_query_and_reference_sizes_differ(hq, wq, hk, wk):
    gen = torch.Generator().manual_seed(6)
    q = _smooth_maps(gen, 1, h=hq, w=wq)
    k = _smooth_maps(gen, 1, 2, h=hk, w=wk)
    v = _random_probs(gen, 1, 2, 3, hk, wk)
    p, lab = lookup(q, k, v, tau=0.1)
    assert p.shape == (1, 3, hq, wq) and lab.shape == (1, hq, wq)
    np.testing.assert_allclose(p.numpy(), _brute_force(q, k, v, 0.1, "soft"), atol=1e-5, rtol=0)


def test_single_class_and_many_classes():
    gen = torch.Generator().manual_seed(7)
    q = _smooth_maps(gen, 1, h=8, w=8)
    k = _smooth_maps(gen, 1, 1, h=8, w=8)
    # C = 1: probabilities of 1 everywhere give 1 everywhere, label 0.
    p, lab = lookup(q, k, torch.ones(1, 1, 1, 8, 8))
    torch.testing.assert_close(p, torch.ones(1, 1, 8, 8))
    assert p.shape == (1, 1, 8, 8) and torch.equal(lab, torch.zeros(1, 8, 8, dtype=torch.int32))
    # C = 64, one-hot over 64 classes.
    labels = torch.randint(0, 64, (1, 1, 8, 8), generator=gen)
    v = _one_hot(labels, 64)
    p, lab = lookup(q, k, v, tau=0.05)
    assert p.shape == (1, 64, 8, 8)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 8, 8))
    np.testing.assert_allclose(p.numpy(), _brute_force(q, k, v, 0.05, "soft"), atol=1e-5, rtol=0)
    p_hard, lab_hard = lookup(q, k, v, mode="hard")
    assert set(lab_hard.unique().tolist()) <= set(labels.unique().tolist())


def test_topk_extremes_equal_soft_and_hard():
    gen = torch.Generator().manual_seed(8)
    q = _smooth_maps(gen, 2, h=9, w=9)
    k = _smooth_maps(gen, 2, 2, h=5, w=6)
    v = _random_probs(gen, 2, 2, 4, 5, 6)
    m = 2 * 5 * 6
    for tau in (0.01, 0.3):
        assert torch.equal(lookup(q, k, v, tau=tau, mode="topk", k=m)[0], lookup(q, k, v, tau=tau)[0])
    assert torch.equal(lookup(q, k, v, mode="topk", k=1)[0], lookup(q, k, v, mode="hard")[0])


def test_exact_ties_pick_the_lowest_reference_index():
    # Every reference pixel sits at the same coordinate: hard and topk must take j = 0, 1, ... in order.
    q = torch.zeros(1, 2, 2, 2)
    k = torch.full((1, 2, 2, 2, 2), 0.5)
    v = torch.arange(8, dtype=torch.float32).reshape(1, 2, 1, 2, 2).expand(1, 2, 1, 2, 2)
    v = torch.cat([v, 7 - v], dim=2)  # C = 2: [j, 7 - j] at reference pixel j
    p_hard, _ = lookup(q, k, v, mode="hard")
    assert torch.equal(p_hard[0, :, 0, 0], torch.tensor([0.0, 7.0]))
    p_top3, _ = lookup(q, k, v, mode="topk", k=3, tau=1.0)
    torch.testing.assert_close(p_top3[0, :, 0, 0], torch.tensor([1.0, 6.0]))  # mean of j = 0, 1, 2
    # Equal probabilities: argmax takes the first class.
    _, lab = lookup(q, k, torch.ones(1, 2, 3, 2, 2))
    assert torch.equal(lab, torch.zeros(1, 2, 2, dtype=torch.int32))


def test_lookup_published_matches_lookup():
    gen = torch.Generator().manual_seed(9)
    q = _smooth_maps(gen, 2, h=10, w=10)
    k = _smooth_maps(gen, 2, 2, h=7, w=9)
    v = _random_probs(gen, 2, 2, 5, 7, 9)
    for tau in (0.01, 0.1):
        p_ref, lab_ref = lookup(q, k, v, tau=tau, chunk_size=17)
        p_pub, lab_pub = lookup_published(q, k, v, tau=tau)
        torch.testing.assert_close(p_pub, p_ref, atol=1e-5, rtol=0)
        assert torch.equal(lab_pub, lab_ref)


def test_half_precision_and_integer_inputs():
    gen = torch.Generator().manual_seed(10)
    q = _smooth_maps(gen, 1, h=6, w=6)
    k = _smooth_maps(gen, 1, 1, h=6, w=6)
    labels = torch.randint(0, 3, (1, 1, 6, 6), generator=gen)
    v = _one_hot(labels, 3)
    p16, lab16 = lookup(q.half(), k.half(), v.half(), tau=0.1)
    p32, _ = lookup(q.half().float(), k.half().float(), v, tau=0.1)
    assert p16.dtype == torch.float32 and lab16.dtype == torch.int32
    assert torch.equal(p16, p32)  # half inputs are widened to float32 first, then computed identically
    assert torch.equal(lookup(q, k, v.to(torch.uint8))[0], lookup(q, k, v)[0])  # one-hot masks as ints


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(11)
    q = _smooth_maps(gen, 1, h=8, w=8)
    k = _smooth_maps(gen, 1, 2, h=8, w=8)
    v = _random_probs(gen, 1, 2, 4, 8, 8)
    for mode, kk in (("soft", None), ("hard", None), ("topk", 5)):
        p_cpu, lab_cpu = lookup(q, k, v, mode=mode, k=kk)
        p_gpu, lab_gpu = lookup(q.cuda(), k.cuda(), v.cuda(), mode=mode, k=kk)
        assert p_gpu.is_cuda and lab_gpu.is_cuda
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, atol=1e-5, rtol=0)


def test_cuda_impl_refuses_cpu_tensors():
    """The fused kernel path says what it needs instead of failing inside CUDA (its GPU tests: test_lookup_cuda)."""
    q = torch.zeros(1, 2, 4, 4)
    with pytest.raises(CoordGANError, match="needs CUDA tensors"):
        lookup(q, torch.zeros(1, 1, 2, 4, 4), torch.ones(1, 1, 3, 4, 4), impl="cuda")
    with pytest.raises(CoordGANError, match="mode must be one of"):
        lookup(q, torch.zeros(1, 1, 2, 4, 4), torch.ones(1, 1, 3, 4, 4), mode="fuzzy", impl="cuda")


# ---------------------------------------------------------------------------------- bad inputs


def _good() -> dict:
    return {
        "query": torch.zeros(1, 2, 4, 4),
        "ref_maps": torch.zeros(1, 2, 2, 3, 5),
        "ref_probs": torch.ones(1, 2, 3, 3, 5),
    }


def _with(**changes) -> dict:
    args = _good()
    args.update(changes)
    return args


def _poked(name: str, value: float) -> torch.Tensor:
    t = _good()[name].clone()
    t.view(-1)[3] = value
    return t


BAD_INPUTS = [
    (_with(query=torch.zeros(2, 4, 4)), {}, r"query must have shape \(N, 2, Hq, Wq\), got \(2, 4, 4\)"),
    (_with(query=torch.zeros(1, 3, 4, 4)), {}, r"2 coordinate channels, got \(1, 3, 4, 4\)"),
    (_with(query=np.zeros((1, 2, 4, 4))), {}, r"query must be a torch.Tensor"),
    (_with(query=torch.zeros(1, 2, 0, 4)), {}, r"query has an empty dimension"),
    (_with(query=torch.zeros(1, 2, 4, 4, dtype=torch.int64)), {}, r"query must be a floating-point tensor"),
    (_with(ref_maps=torch.zeros(1, 2, 3, 5)), {}, r"ref_maps must have shape \(N, R, 2, Hk, Wk\), got \(1, 2, 3, 5\)"),
    (_with(ref_maps=torch.zeros(2, 2, 2, 3, 5)), {}, r"ref_maps must have shape .* = \(1, 2, 2, 3, 5\) to match query"),
    (_with(ref_maps=torch.zeros(1, 2, 3, 3, 5)), {}, r"= \(1, 2, 2, 3, 5\) to match query, got \(1, 2, 3, 3, 5\)"),
    (_with(ref_probs=torch.ones(1, 3, 3, 3, 5)), {}, r"ref_probs must have shape .* = \(1, 2, 3, 3, 5\) to match"),
    (_with(ref_probs=torch.ones(1, 2, 3, 3, 4)), {}, r"ref_probs .* to match ref_maps, got \(1, 2, 3, 3, 4\)"),
    (_with(ref_probs=torch.ones(2, 2, 3, 3, 5)), {}, r"ref_probs must have shape"),
    (_good(), {"mode": "nearest"}, r"mode must be one of 'soft', 'hard' or 'topk', got 'nearest'"),
    (_good(), {"mode": "topk"}, r"mode='topk' needs k"),
    (_good(), {"mode": "topk", "k": 0}, r"k must be an integer between 1 and R\*Hk\*Wk = 30, got 0"),
    (_good(), {"mode": "topk", "k": 31}, r"between 1 and R\*Hk\*Wk = 30, got 31"),
    (_good(), {"mode": "topk", "k": 2.5}, r"k must be an integer"),
    (_good(), {"mode": "soft", "k": 4}, r"k is only used with mode='topk'"),
    (_good(), {"tau": 0.0}, r"tau must be a finite number > 0, got 0.0"),
    (_good(), {"tau": -0.01}, r"tau must be a finite number > 0"),
    (_good(), {"tau": float("nan")}, r"tau must be a finite number > 0"),
    (_good(), {"chunk_size": 0}, r"chunk_size must be a positive integer, got 0"),
    (_with(query=_poked("query", float("nan"))), {}, r"^query contains NaN or Inf\.$"),
    (_with(query=_poked("query", float("inf"))), {}, r"^query contains NaN or Inf\.$"),
    (_with(ref_maps=_poked("ref_maps", float("-inf"))), {}, r"^ref_maps contains NaN or Inf\.$"),
    (_with(query=_poked("query", 1.5)), {}, r"query has coordinates outside \[-1, 1\] \(largest magnitude 1\.5\)"),
    (_with(ref_maps=_poked("ref_maps", -2.0)), {}, r"ref_maps has coordinates outside \[-1, 1\]"),
    (_with(ref_probs=_poked("ref_probs", float("nan"))), {}, r"^ref_probs contains NaN or Inf\.$"),
    (_with(ref_probs=_poked("ref_probs", -0.25)), {}, r"ref_probs contains negative values \(min -0\.25\)"),
]


@pytest.mark.parametrize("args,kwargs,message", BAD_INPUTS)
def test_bad_inputs_raise_a_clear_error(args, kwargs, message):
    with pytest.raises(CoordGANError, match=message):
        lookup(**args, **kwargs)


def test_bad_inputs_of_lookup_published():
    with pytest.raises(CoordGANError, match="query contains NaN or Inf"):
        lookup_published(**_with(query=_poked("query", float("nan"))))
    with pytest.raises(CoordGANError, match="tau must be a finite number > 0"):
        lookup_published(**_good(), tau=0)


def test_coordinates_just_past_one_are_tolerated():
    # tanh outputs rounded to float16 can land a hair beyond 1.
    args = _with(query=_poked("query", 1.0005))
    p, _ = lookup(**args)
    assert torch.isfinite(p).all()


# ------------------------------------------------------------------------------------- chamfer


def test_chamfer_zero_for_identical_sets():
    pts = torch.rand(3, 50, 2, generator=torch.Generator().manual_seed(12))
    assert chamfer_distance(pts, pts).item() == 0.0
    # Same set in another order, too.
    assert chamfer_distance(pts, pts[:, torch.randperm(50)]).item() == 0.0


def test_chamfer_known_values():
    # 1-D: a = {0, 1}, b = {0, 3}. a->b: mins 0, 1 -> mean 0.5; b->a: mins 0, 4 -> mean 2; total 2.5.
    a = torch.tensor([[[0.0], [1.0]]])
    b = torch.tensor([[[0.0], [3.0]]])
    assert chamfer_distance(a, b).item() == pytest.approx(2.5)
    # 2-D, two items averaged. Item 1: a = {(0,0)} x3, b = {(1,1), (2,0), (0,2)}: a->b = 2;
    # b->a = (2 + 4 + 4) / 3; total 16/3.
    a2 = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0]] * 3])
    b2 = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [3.0, 0.0]], [[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]]])
    # item 0 with duplicated points: a->b mins 0, 1, 1 -> 2/3; b->a mins 0, 4, 4 -> 8/3; total 10/3.
    assert chamfer_distance(a2, b2).item() == pytest.approx((10 / 3 + 16 / 3) / 2)


def test_chamfer_symmetric_chunked_and_matches_dense():
    gen = torch.Generator().manual_seed(13)
    a = torch.rand(2, 37, 2, generator=gen) * 2 - 1
    b = torch.rand(2, 23, 2, generator=gen) * 2 - 1
    d2 = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    dense = (d2.amin(2).mean(1) + d2.amin(1).mean(1)).mean()
    for chunk in (1, 5, 4096):
        torch.testing.assert_close(chamfer_distance(a, b, chunk_size=chunk), dense, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(chamfer_distance(a, b), chamfer_distance(b, a), atol=0, rtol=1e-6)
    assert chamfer_distance(a.half(), b.half()).dtype == torch.float32


def test_chamfer_nearest_is_the_first_minimum_in_any_dimension():
    """The nearest-point search against brute force in float64, with exact ties (integer points):
    the lowest index wins, so the gradient goes to one well-defined point whatever the chunking."""
    from coordgan.train.warp_ops import _nearest

    gen = torch.Generator().manual_seed(15)
    for d in (1, 2, 3):
        a = torch.randint(-3, 4, (2, 41, d), generator=gen).float()
        b = torch.randint(-3, 4, (2, 29, d), generator=gen).float()
        truth = ((a[:, :, None].double() - b[:, None].double()) ** 2).sum(-1).argmin(-1)
        for chunk in (1, 5, 4096):
            assert torch.equal(_nearest(a, b, chunk), truth)


def test_chamfer_gradient_flows():
    gen = torch.Generator().manual_seed(14)
    a = (torch.rand(2, 20, 2, generator=gen) * 2 - 1).requires_grad_()
    b = (torch.rand(2, 30, 2, generator=gen) * 2 - 1).requires_grad_()
    chamfer_distance(a, b, chunk_size=7).backward()
    # Against autograd through the dense formula (gradient of a min = gradient at its argmin).
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    d2 = ((a2[:, :, None] - b2[:, None]) ** 2).sum(-1)
    (d2.amin(2).mean(1) + d2.amin(1).mean(1)).mean().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    # Pulling one warped set towards a fixed grid lowers the loss.
    grid = canonical_grid(6, 6).flatten(1).t()[None]
    warp = (0.5 * grid + 0.1).requires_grad_()
    loss = chamfer_distance(warp, grid)
    loss.backward()
    with torch.no_grad():
        assert chamfer_distance(warp - 0.5 * warp.grad, grid) < loss


@pytest.mark.parametrize(
    "a,b,message",
    [
        (torch.zeros(2, 3), torch.zeros(1, 2, 3), r"a must have shape \(N, P, D\), got \(2, 3\)"),
        (torch.zeros(1, 4, 2), torch.zeros(2, 4, 2), r"b must have shape \(N, M, D\) = \(1, M, 2\) to match a"),
        (torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), r"to match a, got \(1, 4, 3\)"),
        (torch.zeros(1, 0, 2), torch.zeros(1, 4, 2), r"a has an empty dimension"),
        (torch.zeros(1, 4, 2, dtype=torch.int32), torch.zeros(1, 4, 2), r"floating-point"),
    ],
)
def test_chamfer_bad_inputs(a, b, message):
    with pytest.raises(CoordGANError, match=message):
        chamfer_distance(a, b)
