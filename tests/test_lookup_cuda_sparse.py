"""The sparse GPU lookup (runtime/lookup/corr_lookup_sparse.cu) against the reference, on this CPU.

Its kernels are compiled twice from one text: for a GPU (NVRTC / nvcc) and, with -DCLS_HOST, for the
CPU, where each kernel is a loop over its threads. The CPU build runs here through the very launch
sequence the GPU runs (runtime.lookup.cuda_sparse.plan), on fresh random warps, a real tiny model's
maps and degenerate ones: soft within its bound (|dP| <= tol * max V), hard and topk exact (at
a near tie, within what any of the tied picks gives: every pixel is checked). The device build's
entry points are checked against that sequence (names, argument counts, in PTX); it runs on a GPU in
tests/test_lookup_cuda.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import CoordGANError
from runtime.lookup import choose_impl, cuda_sparse, lookup, lookup_dense

torch = pytest.importorskip("torch")
from lookup_helpers import assert_labels, case, degenerate_maps, grid, ref, tiny_model_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
    pytest.skip("no C++ compiler for the host build of the sparse CUDA kernels", allow_module_level=True)


def host(q, kmap, v, **kw):
    info: dict = {}
    p, labels = cuda_sparse.lookup_numpy(q, kmap, v, kernels="host", info=info, **kw)
    return p, labels, info


def near_tie_range(q, kmap, v, k, tau=0.01, eps=1e-6):
    """Where an ulp of difference in a float32 distance (fma or not) may pick another of the k
    nearest: some reference pixel at another point than the k-th nearest lies less than `eps` farther
    or nearer. (Pixels at one point tie exactly on every path, and the lowest index wins.) Returns the
    (N, Hq, Wq) mask of those query pixels and, there, the lowest and highest P (N, C, Hq, Wq) that
    any such pick gives (NaN elsewhere): the pixels nearer than the band are in, `need` of the band's
    join them, each band weight lies in [w_lo, w_hi], and V >= 0."""
    n, c = q.shape[0], v.shape[2]
    qs = q.reshape(n, 2, -1).astype(np.float64)
    ks = kmap.transpose(0, 2, 1, 3, 4).reshape(n, 2, -1).astype(np.float64)
    vs = v.transpose(0, 2, 1, 3, 4).reshape(n, c, -1).astype(np.float64)
    lo = np.full((n, c, qs.shape[2]), np.nan)
    hi = lo.copy()
    mask = np.zeros((n, qs.shape[2]), bool)
    for b in range(n):
        d = np.sqrt(((qs[b][:, :, None] - ks[b][:, None, :]) ** 2).sum(0))  # (Nq, M)
        kth = np.argsort(d, axis=1, kind="stable")[:, k - 1]
        dk = d[np.arange(len(d)), kth][:, None]
        elsewhere = (ks[b][0][None] != ks[b][0][kth][:, None]) | (ks[b][1][None] != ks[b][1][kth][:, None])
        mask[b] = (elsewhere & (np.abs(d - dk) < eps)).any(axis=1)
        for i in np.flatnonzero(mask[b]):
            w = np.exp((d[i].min() - d[i]) / tau)
            sure, band = d[i] < dk[i] - eps, np.abs(d[i] - dk[i]) <= eps
            need = k - int(sure.sum())
            a, s = vs[b][:, sure] @ w[sure], w[sure].sum()
            vb = np.sort(vs[b][:, band], axis=1)
            w_lo, w_hi = w[band].min(), w[band].max()
            lo[b, :, i] = (a + w_lo * vb[:, :need].sum(1)) / (s + need * w_hi)
            hi[b, :, i] = (a + w_hi * vb[:, -need:].sum(1)) / (s + need * w_lo)
    return mask.reshape(q[:, 0].shape), lo.reshape(n, c, *q.shape[2:]), hi.reshape(n, c, *q.shape[2:])


def within_bound(p, p_ref, v, mode, q=None, kmap=None, k=None, tol=1e-4):
    """(max |dP|, its limit). soft: its bound. hard copies V: exact, except at near ties of the
    nearest (`q`, `kmap` given), where P must lie within what the tied picks give; topk: the
    weights' float32 rounding, which 1/tau = 100 amplifies (distances rounded differently from
    numpy's by an ulp move a weight by ~1e-5), and near ties as for hard."""
    diff = np.abs(p - p_ref).max(axis=1)
    if mode != "soft" and q is not None:
        ties, lo, hi = near_tie_range(q, kmap, v, k or 1)
        outside = np.maximum(np.maximum(lo - p, p - hi), 0.0).max(axis=1)
        diff = np.where(ties, outside, diff)
    limit = {"soft": tol * float(v.max()) + 2e-6, "hard": 0.0, "topk": 1e-5}[mode]
    return float(diff.max(initial=0.0)), limit


@pytest.mark.parametrize("mode,k,n,r,c", [("soft", None, 2, 2, 5), ("soft", None, 1, 1, 1), ("soft", None, 1, 3, 64),
                                          ("hard", None, 2, 2, 5), ("topk", 1, 1, 2, 3), ("topk", 9, 2, 1, 6),
                                          ("topk", 64, 1, 2, 33)])
def test_matches_the_reference(rng, mode, k, n, r, c):
    q, kmap, v = case(rng, n=n, r=r, c=c, hq=40, wq=36, hk=44, wk=40)
    p_ref, l_ref = ref(q, kmap, v, mode=mode, k=k)
    p, labels, info = host(q, kmap, v, mode=mode, k=k)
    assert p.dtype == np.float32 and labels.dtype == np.int32 and p.shape == p_ref.shape
    err, limit = within_bound(p, p_ref, v, mode, q, kmap, k)
    assert err <= limit, f"max |dP| {err:.3g} > {limit:.3g}, seed {rng.seed_value}"
    assert_labels(labels, l_ref, p_ref, rng.seed_value)
    assert 0 < info["pairs"] <= info["dense_pairs"]


def test_evaluates_few_pairs_on_smooth_maps_and_keeps_its_bound_at_any_tol(rng):
    q, kmap, v = case(rng, n=1, r=1, c=4, hq=64, wq=64, hk=64, wk=64)
    p_d, _ = lookup_dense(q, kmap, v)
    _, _, info = host(q, kmap, v)
    assert info["pairs"] < 0.15 * info["dense_pairs"], info  # ~2 % at 128 px
    for tol, tau in ((1e-2, 0.01), (1e-6, 0.01), (1e-4, 0.003), (1e-4, 0.04)):
        p_tau, _ = lookup_dense(q, kmap, v, tau=tau)
        p, _, _ = host(q, kmap, v, tau=tau, tol=tol)
        err = float(np.abs(p - p_tau).max())
        assert err <= tol * v.max() + 2e-6, f"tol {tol}, tau {tau}: max |dP| {err:.3g}, seed {rng.seed_value}"


@pytest.mark.parametrize("mode,k", [("soft", None), ("hard", None), ("topk", 4)])
def test_on_tiny_model_maps(rng, mode, k):
    q, kmap, v = tiny_model_case(rng)
    p_d, l_d = lookup_dense(q, kmap, v, mode=mode, k=k)
    p, labels, _ = host(q, kmap, v, mode=mode, k=k)
    err, limit = within_bound(p, p_d, v, mode, q, kmap, k)
    assert err <= limit and (labels == l_d).mean() >= 0.999, f"seed {rng.seed_value}"


@pytest.mark.parametrize("mode,k", [("soft", None), ("hard", None), ("topk", 3)])
def test_degenerate_maps(rng, mode, k):
    """References in a corner, squeezed into a tiny area, all on one point, collapsed as an untrained
    encoder's, or scattered; queries far outside every reference's box; one batch item of each."""
    q, kmap, v = case(rng, n=1, r=1, c=3, hq=24, wq=24, hk=28, wk=28)
    maps = degenerate_maps(rng, kmap)
    far = (q * 0.2 + 0.75).astype(np.float32)
    for queries in (q, far):
        kk = np.concatenate(list(maps.values()))  # items of different geometry in one launch
        qq = np.repeat(queries, len(maps), axis=0)
        vv = np.repeat(v, len(maps), axis=0)
        p_d, l_d = lookup_dense(qq, kk, vv, mode=mode, k=k)
        p, labels, _ = host(qq, kk, vv, mode=mode, k=k)
        err, limit = within_bound(p, p_d, vv, mode, qq, kk, k)
        assert err <= limit, f"max |dP| {err:.3g}, seed {rng.seed_value}"
        assert (labels == l_d).mean() >= 0.99, rng.seed_value  # (near ties: labels may differ there)


def test_exact_ties_go_to_the_lowest_index():
    """Query = the reference grid, two identical references: every pixel ties exactly, and the
    pixels are visited cell by cell, not in index order."""
    g = grid(5, 9)[None]
    kmap = np.stack([g[0], g[0]])[None]
    v = np.zeros((1, 2, 3, 5, 9), np.float32)
    v[0, 0, 0] = 1.0
    v[0, 1, 2] = 1.0
    v[0, 0, 1, :, 1::2] = 2.0
    shifted = np.clip(g + np.array([0.125, 0.25], np.float32)[None, :, None, None], -1, 1)
    for query in (g, shifted):
        for mode, k in (("hard", None), ("topk", 1), ("topk", 3), ("topk", 6)):
            p_ref, l_ref = ref(query, kmap, v, mode=mode, k=k)
            p, labels, _ = host(query, kmap, v, mode=mode, k=k)
            assert np.abs(p - p_ref).max() <= 1e-5 and np.array_equal(labels, l_ref), (mode, k)


def test_the_launch_sequence_fits_the_device_entry_points(tmp_path):
    """Every launch names an entry point of the PTX, with as many parameters as it passes (a missing
    one would launch with garbage on a GPU); the workspace's buffers are aligned and apart."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    ptx = tmp_path / "sparse.ptx"
    done = subprocess.run([nvcc, "-ptx", "-arch=compute_90", str(cuda_sparse.SOURCE), "-o", str(ptx)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr.lower(), done.stderr
    text = ptx.read_text()
    params = {name: len(re.findall(r"\.param\s", body))
              for name, body in re.findall(r"\.visible \.entry (\w+)\((.*?)\)", text, re.S)}
    assert set(params) == set(cuda_sparse.kernel_names())
    for mode, k, c in (("soft", None, 5), ("hard", None, 64), ("topk", 7, 1)):
        p = cuda_sparse.Problem(n=3, hq=8, wq=9, r=2, hk=10, wk=11, c=c, tau=0.01, mode=mode, k=k, tol=1e-4)
        for launch in cuda_sparse.plan(p):
            assert params[launch.name] == 2 + len(launch.args), launch.name
        layout, size = cuda_sparse.workspace_layout(p)
        spans = sorted((offset, offset + count * dtype.itemsize) for offset, dtype, count in layout.values())
        assert all(a % 256 == 0 for a, _ in spans) and spans[-1][1] <= size
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_dispatch_and_user_errors(rng):
    q, kmap, v = case(rng, n=1, r=1, c=3, hq=8, wq=8, hk=8, wk=8)
    assert choose_impl("cuda-sparse", classes=3, on_gpu=True) == "cuda-sparse"
    with pytest.raises(CoordGANError, match="needs CUDA tensors"):
        choose_impl("cuda-sparse", classes=3, on_gpu=False)
    with pytest.raises(CoordGANError, match="at most 64 classes"):
        choose_impl("cuda-sparse", classes=65)
    for kw, match in (({"tol": 0}, "tol must be"), ({"tol": 1.5}, "tol must be"), ({"kernels": "tpu"}, "kernels must"),
                      ({"mode": "topk", "k": 65}, "k must be an integer between 1 and"), ({"tau": 0.0}, "tau")):
        with pytest.raises(CoordGANError, match=match):
            cuda_sparse.lookup_numpy(q, kmap, v, **{"kernels": "host", **kw})
    bad = q.copy()
    bad.flat[0] = np.nan
    with pytest.raises(CoordGANError):
        cuda_sparse.lookup_numpy(bad, kmap, v, kernels="host")
    from runtime import cuda_driver

    if not cuda_driver.available():  # the device path says why it cannot run, in one sentence
        with pytest.raises(CoordGANError) as err:
            lookup(q, kmap, v, impl="cuda-sparse")
        assert "\n" not in str(err.value)


def test_non_finite_inputs_and_a_tiny_tau_end_the_search(tmp_path):
    """Device pointers are not value-checked: NaN or infinite maps must give NaN (or some pick), never
    a kernel that searches forever; nor may a tau below the float32 ulp of the radius stall it.
    Run in a child process, so a regression fails on its timeout instead of hanging the suite."""
    code = """
import numpy as np
from runtime.lookup import cuda_sparse as cs
rng = np.random.default_rng(0)
for mode, k in (("soft", None), ("hard", None), ("topk", 2)):
    for where, value in (("K", np.nan), ("Q", np.nan), ("Q", -np.inf), ("Q", np.inf)):
        K = rng.uniform(-1, 1, (1, 1, 2, 8, 8)).astype(np.float32)
        V = rng.uniform(0, 1, (1, 1, 2, 8, 8)).astype(np.float32)
        Q = rng.uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)
        (K if where == "K" else Q).flat[5] = value
        p = cs._problem(1, 4, 4, 1, 8, 8, 2, 0.01, mode, k, 1e-4)
        _, size = cs.workspace_layout(p)
        work = np.zeros(size, np.uint8)
        P, L = np.empty((1, 2, 4, 4), np.float32), np.empty((1, 4, 4), np.int32)
        io = {"Q": Q.ctypes.data, "K": K.ctypes.data, "V": V.ctypes.data, "P": P.ctypes.data, "labels": L.ctypes.data}
        cs._run("host", cs.plan(p), cs._pointers(p, work.ctypes.data, io))
g = np.linspace(-1, 1, 8, dtype=np.float32)
K = np.stack(np.meshgrid(g, g))[None, None].astype(np.float32)
q = np.clip(K[0, :, :, :4, :4] + np.float32(0.1428), -1, 1)
for tau in (1e-9, 5e-10):
    p_out, _ = cs.lookup_numpy(q, K, np.ones((1, 1, 1, 8, 8), np.float32), tau=tau, kernels="host")
    assert np.isfinite(p_out).all()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
