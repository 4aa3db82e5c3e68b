"""The CPU correspondence lookups (runtime.lookup) against the torch reference.

Dense numpy must equal coordgan.correspondence.lookup to 1e-5; sparse (numba kernels) must stay
within its stated bound of dense (|dP| <= tol * max V, and <= 1e-3) and agree on >= 99.9% of labels;
hard and topk are exact in both. Inputs are smooth random warps of the canonical grid (what a
CoordGAN warping network makes) and the maps of a real tiny-preset model's warping network, drawn
fresh on every run: a failure prints its seed so it can be replayed with LOOKUP_TEST_SEED.

The first sparse calls of a fresh checkout compile the kernels (~5 s soft, ~3 s hard/topk on 2 cores);
numba caches them on disk (~0.5 s to load).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import CoordGANError
from runtime.lookup import lookup, lookup_dense, lookup_sparse

torch = pytest.importorskip("torch")
from lookup_helpers import assert_labels, case, degenerate_maps, grid, ref, tiny_model_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_snippet(code: str, **env: str) -> None:
    """Run `code` in a fresh Python process at the project root; it must exit 0."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------------


def test_runtime_lookup_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import runtime.lookup, runtime.lookup.sparse, runtime.lookup.cuda\n"
        "import numpy as np\n"
        "q = np.zeros((1, 2, 4, 4), np.float32); k = np.zeros((1, 1, 2, 4, 4), np.float32)\n"
        "v = np.ones((1, 1, 3, 4, 4), np.float32)\n"
        "runtime.lookup.lookup(q, k, v, impl='sparse')\n"
    )
    run_snippet(code)


@pytest.mark.parametrize(
    "mode,k,r,c",
    [("soft", None, 1, 4), ("soft", None, 3, 64), ("soft", None, 2, 1), ("hard", None, 2, 5), ("topk", 1, 1, 3),
     ("topk", 9, 2, 6), ("topk", 2 * 20 * 22, 2, 2)],
)
def test_dense_matches_reference(rng, mode, k, r, c):
    q, kmap, v = case(rng, n=2, r=r, c=c)
    p_ref, l_ref = ref(q, kmap, v, mode=mode, k=k)
    p, labels = lookup_dense(q, kmap, v, mode=mode, k=k)
    assert p.dtype == np.float32 and labels.dtype == np.int32
    assert p.shape == (2, c, 24, 20) and labels.shape == (2, 24, 20)
    assert np.abs(p - p_ref).max() <= 1e-5, f"seed {rng.seed_value}"
    assert_labels(labels, l_ref, p_ref, rng.seed_value)


def test_dense_small_chunks_and_tau(rng):
    q, kmap, v = case(rng, r=2, c=3)
    for tau in (0.003, 0.05, 1.0):
        p_ref, _ = ref(q, kmap, v, tau=tau)
        p, _ = lookup_dense(q, kmap, v, tau=tau, chunk=7)
        assert np.abs(p - p_ref).max() <= 1e-5, f"tau {tau}, seed {rng.seed_value}"


def test_dense_float16_and_integer_inputs(rng):
    q, kmap, v = case(rng, r=1, c=3, one_hot=True)
    q16, k16, vint = q.astype(np.float16), kmap.astype(np.float16), v.astype(np.int64)
    p_ref, l_ref = ref(q16, k16, vint)
    p, labels = lookup_dense(q16, k16, vint)
    assert np.abs(p - p_ref).max() <= 1e-5
    assert_labels(labels, l_ref, p_ref, rng.seed_value)


def test_hard_and_topk_ties_on_the_identity_grid():
    """Query = the reference grid, two identical references: every pixel has exact ties."""
    g = grid(5, 9)[None]  # dyadic coordinates (steps of 0.5 and 0.25): distances tie exactly
    kmap = np.stack([g[0], g[0]])[None]  # (1, 2, 2, 5, 9): r = 0 and r = 1 tie everywhere
    v = np.zeros((1, 2, 3, 5, 9), np.float32)
    v[0, 0, 0] = 1.0  # the lowest j (r = 0) says class 0, its twin says class 2
    v[0, 1, 2] = 1.0
    v[0, 0, 1, :, 1::2] = 2.0  # and neighbouring pixels disagree, so picking the wrong tie shows
    for fn in (lookup_dense, lookup_sparse):
        p, labels = fn(g, kmap, v, mode="hard")
        assert np.array_equal(p, ref(g, kmap, v, mode="hard")[0])
        assert np.array_equal(p[0], v[0, 0])
    # half a pixel off in x and y: 4 reference pixels (8 with the twin) at exactly one distance
    shifted = np.clip(g + np.array([0.125, 0.25], np.float32)[None, :, None, None], -1, 1)
    for mode, k in (("hard", None), ("topk", 1), ("topk", 3), ("topk", 6)):
        p_ref, l_ref = ref(shifted, kmap, v, mode=mode, k=k)
        for fn in (lookup_dense, lookup_sparse):
            p, labels = fn(shifted, kmap, v, mode=mode, k=k)
            assert np.abs(p - p_ref).max() <= 1e-6, (fn.__name__, mode, k)
            assert np.array_equal(labels, l_ref), (fn.__name__, mode, k)


@pytest.mark.parametrize("path", ["dense", "sparse", "every pair"])
def test_tiny_outputs_are_flushed_to_zero(rng, path):
    """Probabilities below 1e-20 come out as 0 on every CPU path (propagation feeds them back in, and
    subnormal floats would slow every later frame ~100x); the rest and the labels are untouched."""
    from runtime.lookup.inputs import FLUSH_BELOW

    q, kmap, v = case(rng, n=1, r=1, c=6, hq=16, wq=16, hk=16, wk=16)
    v[:, :, 3] = 1e-30  # a label whose probability is tiny everywhere...
    v[:, :, 4] *= 1e-16  # ...one whose outputs straddle the threshold
    p_ref, l_ref = ref(q, kmap, v)
    run = {"dense": lambda: lookup_dense(q, kmap, v), "sparse": lambda: lookup_sparse(q, kmap, v),
           "every pair": lambda: lookup_sparse(q, kmap, v, dense_above=0.0)}[path]
    p, labels = run()
    assert not np.any((p != 0) & (np.abs(p) < FLUSH_BELOW))
    assert np.all(p[:, 3] == 0) and np.all(p_ref[:, 3] > 0)
    big = p_ref >= 2 * FLUSH_BELOW
    assert np.allclose(p[big], p_ref[big], rtol=1e-3, atol=1e-4) and np.array_equal(labels, l_ref)


@pytest.mark.parametrize("r,c", [(1, 8), (2, 1), (1, 64), (2, 130)])  # 130: two 64-channel blocks + 8
def test_sparse_matches_dense(rng, r, c):
    q, kmap, v = case(rng, n=1, r=r, c=c, hq=64, wq=64, hk=64, wk=60)
    info: dict = {}
    tol = 1e-4
    p_s, l_s = lookup_sparse(q, kmap, v, tol=tol, info=info)
    p_d, l_d = lookup_dense(q, kmap, v)
    assert info["path"] == "sparse" and info["pairs"] < 0.25 * info["dense_pairs"]
    err = np.abs(p_s - p_d).max()
    assert err <= 1e-3 and err <= tol * v.max() + 1e-6, f"max |dP| {err:.3g}, seed {rng.seed_value}"
    assert (l_s == l_d).mean() >= 0.999, f"seed {rng.seed_value}"


@pytest.mark.parametrize("tol,tau", [(1e-2, 0.01), (1e-6, 0.01), (1e-4, 0.003), (1e-4, 0.04)])
def test_sparse_error_within_its_bound(rng, tol, tau):
    """|dP| <= tol * max(V) for any tol and tau (the bound, not just the default's slack); the kernel
    runs even where the dense path would be chosen (dense_above=1)."""
    q, kmap, v = case(rng, n=1, r=1, c=4, hq=48, wq=48, hk=48, wk=48)
    info: dict = {}
    p_s, _ = lookup_sparse(q, kmap, v, tau=tau, tol=tol, dense_above=1.0, info=info)
    p_d, _ = lookup_dense(q, kmap, v, tau=tau)
    assert info["path"] == "sparse"
    err = np.abs(p_s - p_d).max()
    assert err <= tol * v.max() + 2e-6, f"max |dP| {err:.3g} > tol {tol}, seed {rng.seed_value}"


@pytest.mark.parametrize("mode,k", [("hard", None), ("topk", 1), ("topk", 16)])
def test_sparse_hard_and_topk_are_exact(rng, mode, k):
    q, kmap, v = case(rng, n=2, r=2, c=5, hq=40, wq=48, hk=44, wk=40)
    info: dict = {}
    p_s, l_s = lookup_sparse(q, kmap, v, mode=mode, k=k, info=info)
    p_d, l_d = lookup_dense(q, kmap, v, mode=mode, k=k)
    assert info["path"] == "sparse"
    assert np.abs(p_s - p_d).max() <= 1e-6 and np.array_equal(l_s, l_d), f"seed {rng.seed_value}"


def test_sparse_n_and_threads(rng):
    """N > 1 items, Hq != Hk, any thread count: each run within the bound of dense."""
    q, kmap, v = case(rng, n=2, r=2, c=6, hq=48, wq=40, hk=36, wk=52)
    p_d, l_d = lookup_dense(q, kmap, v)
    for threads in (1, 2, 3):
        info: dict = {}
        p_s, l_s = lookup_sparse(q, kmap, v, threads=threads, info=info)
        assert info["path"] == "sparse" and info["threads"] == threads
        assert np.abs(p_s - p_d).max() <= 1e-4 * v.max() + 1e-6, (threads, rng.seed_value)
        assert (l_s == l_d).mean() >= 0.999, (threads, rng.seed_value)


@pytest.mark.parametrize("mode,k", [("soft", None), ("hard", None), ("topk", 4)])
def test_sparse_on_tiny_model_maps(rng, mode, k):
    q, kmap, v = tiny_model_case(rng)
    p_s, l_s = lookup_sparse(q, kmap, v, mode=mode, k=k)
    p_d, l_d = lookup_dense(q, kmap, v, mode=mode, k=k)
    assert np.abs(p_s - p_d).max() <= (1e-4 * v.max() + 1e-6 if mode == "soft" else 1e-6), f"seed {rng.seed_value}"
    assert (l_s == l_d).mean() >= 0.999, f"seed {rng.seed_value}"


def test_sparse_soft_where_the_nearest_distance_jumps(rng):
    """The soft kernel weighs relative to the previous query's nearest distance and weighs again where
    this query's differs by more than 11 tau: queries alternating between the references and far
    outside them (every neighbour a jump), and far queries at a tiny tau (the nearest pixel takes more
    rounds of growth than the kernel keeps ranges for, so they are merged) stay within the bound."""
    q, kmap, v = case(rng, n=1, r=2, c=5, hq=32, wq=32, hk=32, wk=32)
    kmap = (kmap * 0.45 - 0.5).astype(np.float32)  # the references in [-0.95, -0.05]^2
    q = (q * 0.45 - 0.5).astype(np.float32)
    q[:, :, :, 1::2] += 1.0  # every other column 0.1 .. 1.9 away from them
    for tau, query in ((0.01, q), (1e-4, (q * 0.1 + 0.85).astype(np.float32))):
        info: dict = {}
        p_s, l_s = lookup_sparse(query, kmap, v, tau=tau, dense_above=1.0, info=info)
        p_d, l_d = lookup_dense(query, kmap, v, tau=tau)
        assert info["path"] == "sparse"
        assert np.abs(p_s - p_d).max() <= 1e-4 * v.max() + 1e-6, (tau, rng.seed_value)
        assert (l_s == l_d).mean() >= 0.999, (tau, rng.seed_value)


@pytest.mark.parametrize("threads", [1, 3])
def test_sparse_soft_pairs_of_neighbours_and_queries_alone(rng, threads):
    """The soft kernel shares one disk between two neighbouring queries whose coordinates are within
    4 tau, and takes the others alone: a fine query map (neighbours ~1.6 tau apart: pairs), its odd
    last query (alone), and a band of queries far apart from their neighbours (alone), in one call;
    every one within the bound of dense."""
    q, kmap, v = case(rng, n=1, r=2, c=9, hq=101, wq=101, hk=64, wk=64)  # 10201 queries: chunks of odd length
    q[:, :, :5] = rng.uniform(-1, 1, (1, 2, 5, 101)).astype(np.float32)  # 5 rows of scattered queries
    step = np.abs(np.diff(q[0].reshape(2, -1), axis=1)).sum(axis=0)  # L1 from each query to the next
    assert (step <= 0.04).mean() > 0.8 and (step > 0.04).sum() > 400  # pairs, and queries alone
    info: dict = {}
    p_s, l_s = lookup_sparse(q, kmap, v, threads=threads, dense_above=1.0, info=info)
    p_d, l_d = lookup_dense(q, kmap, v)
    assert info["path"] == "sparse" and 0.5 * q[0, 0].size < info["shared"] < q[0, 0].size - 400, info["shared"]
    assert np.abs(p_s - p_d).max() <= 1e-4 * v.max() + 1e-6, rng.seed_value
    assert (l_s == l_d).mean() >= 0.999, rng.seed_value


@pytest.mark.parametrize("mode,k", [("soft", None), ("hard", None), ("topk", 3)])
def test_sparse_degenerate_maps(rng, mode, k):
    """References squeezed into a tiny area or a corner, all on one point, or scattered at random;
    queries far from all of them. Correct either way (the dense fallback or the kernel)."""
    q, kmap, v = case(rng, n=1, r=1, c=3, hq=32, wq=32, hk=40, wk=40)
    tol = 1e-4 * v.max() + 1e-6 if mode == "soft" else 1e-6
    maps = degenerate_maps(rng, kmap)
    for name, k_map in maps.items():
        p_s, l_s = lookup_sparse(q, k_map, v, mode=mode, k=k)
        p_d, l_d = lookup_dense(q, k_map, v, mode=mode, k=k)
        assert np.abs(p_s - p_d).max() <= tol, (name, rng.seed_value)
        assert (l_s == l_d).mean() >= 0.999, (name, rng.seed_value)
    # the kernel itself on the hard cases (dense_above=1: never the dense shortcut)
    far = (q * 0.2 + 0.75).astype(np.float32)  # every query far outside the references' box
    for k_map in (maps["tiny area"], maps["one point"], -(kmap * 0.2 + 0.75).astype(np.float32)):
        info: dict = {}
        p_s, l_s = lookup_sparse(far, k_map, v, mode=mode, k=k, dense_above=1.0, info=info)
        p_d, l_d = lookup_dense(far, k_map, v, mode=mode, k=k)
        assert info["path"] == "sparse"
        assert np.abs(p_s - p_d).max() <= tol, rng.seed_value
        assert (l_s == l_d).mean() >= 0.999, rng.seed_value


def test_sparse_without_numba_runs_dense():
    """No numba: the sparse call warns once and returns the dense result."""
    code = (
        "import sys, warnings; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from runtime.lookup import lookup_sparse, lookup_dense\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32); k = rng.uniform(-1, 1, (1, 1, 2, 6, 6)).astype(np.float32)\n"
        "v = rng.uniform(0, 1, (1, 1, 3, 6, 6)).astype(np.float32)\n"
        "info = {}\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    p, _ = lookup_sparse(q, k, v, tau=0.001, info=info)\n"
        "    lookup_sparse(q, k, v, tau=0.001)\n"
        "assert info['path'] == 'dense' and 'numba is not installed' in info['reason'], info\n"
        "assert sum('numba is not installed' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
        "assert np.array_equal(p, lookup_dense(q, k, v, tau=0.001)[0])\n"
    )
    run_snippet(code)


def test_kernel_cache_falls_back_to_a_temp_dir_when_read_only():
    """Package directory and user cache not writable (simulated): numba caches in a temp dir."""
    code = (
        "import numba.core.caching as c\n"
        "c.InTreeCacheLocator.from_function = classmethod(lambda cls, f, p: None)\n"
        "c.UserWideCacheLocator.from_function = classmethod(lambda cls, f, p: None)\n"
        "import numba, tempfile\n"
        "from runtime.lookup.kernels import jit as k\n"
        "assert k.CACHE and numba.config.CACHE_DIR.startswith(tempfile.gettempdir()), numba.config.CACHE_DIR\n"
    )
    run_snippet(code, NUMBA_CACHE_DIR="")


def test_warm_up_loads_the_kernels_of_the_mode_once_on_a_background_thread():
    """In a fresh process: warm_up starts one daemon thread per kernel kind, whatever the number of
    calls, which leaves the mode's kernels compiled for the real calls' argument types; a dense or
    CUDA impl starts none."""
    code = (
        "import threading\n"
        "from runtime import lookup as L\n"
        "from runtime.lookup import sparse\n"
        "def warmers():\n"
        "    return [t for t in threading.enumerate() if t.name == 'coordgan-lookup-warm']\n"
        "L.warm_up('dense'); L.warm_up('cuda')\n"
        "assert not warmers()\n"
        "L.warm_up('sparse', 'soft'); L.warm_up('auto', 'soft')\n"
        "started = warmers(); assert len(started) == 1 and started[0].daemon, started\n"
        "started[0].join()\n"
        "kern, _ = sparse._kernels()\n"
        "assert kern.soft.signatures and kern.sort_grid.signatures and kern.gather_channels.signatures\n"
        "assert not kern.nearest_k.signatures\n"
        "L.warm_up('sparse', 'topk'); [t.join() for t in warmers()]\n"
        "assert kern.nearest_k.signatures\n"
        "import numpy as np\n"
        "q = np.zeros((1, 2, 4, 4), np.float32); k = np.zeros((1, 1, 2, 5, 5), np.float32)\n"
        "v = np.ones((1, 1, 2, 5, 5), np.float32) / 2\n"
        "n = len(kern.soft.signatures)\n"
        "sparse.lookup_sparse(q, k, v, dense_above=1.0)\n"
        "assert len(kern.soft.signatures) == n, 'a real call compiled another signature'\n"
    )
    run_snippet(code)


@pytest.mark.parametrize("c,threads", [(3, 1), (8, 2), (40, 2)])
def test_every_pair_path_on_collapsed_maps_matches_the_reference(rng, c, threads):
    """Reference maps collapsed into a region far smaller than tau's reach (an untrained encoder's): no
    pixel can be skipped, so the soft lookup runs every pair compiled (the per-channel kernel; BLAS
    sums above 31 classes), over query counts that are no multiple of its blocks, and agrees with
    the reference."""
    q, kmap, v = case(rng, n=2, r=2, c=c, hq=7, wq=9, hk=13, wk=11)
    kmap = np.float32(0.3) + np.float32(0.002) * kmap
    q = np.float32(0.3) + np.float32(0.003) * q
    info: dict = {}
    p, labels = lookup_sparse(q, kmap, v, tau=0.01, info=info, threads=threads)
    assert info["path"] == "dense" and info["pairs"] == info["dense_pairs"]
    p_ref, l_ref = ref(q, kmap, v, tau=0.01)
    assert np.abs(p - p_ref).max() <= 1e-5, rng.seed_value
    assert_labels(labels, l_ref, p_ref, rng.seed_value)


def test_sparse_falls_back_to_dense_for_large_tau(rng):
    q, kmap, v = case(rng, n=1, r=1, c=4, hq=32, wq=32, hk=32, wk=32)
    info: dict = {}
    p_s, l_s = lookup_sparse(q, kmap, v, tau=0.5, info=info)
    assert info["path"] == "dense" and info["pairs"] == info["dense_pairs"]
    p_ref, l_ref = ref(q, kmap, v, tau=0.5)
    assert np.abs(p_s - p_ref).max() <= 1e-5
    assert_labels(l_s, l_ref, p_ref, rng.seed_value)


def test_dispatcher(rng):
    q, kmap, v = case(rng, r=1, c=3)
    p_ref, _ = ref(q, kmap, v)
    for impl in ("auto", "dense", "sparse"):
        p, _ = lookup(q, kmap, v, tau=0.01, mode="soft", impl=impl, threads=2)
        assert np.abs(p - p_ref).max() <= 1e-4
    with pytest.raises(CoordGANError, match="impl must be one of"):
        lookup(q, kmap, v, impl="tpu")


@pytest.mark.parametrize("fn", [lookup_dense, lookup_sparse])
def test_user_errors(rng, fn):
    q, kmap, v = case(rng, r=1, c=3, hq=8, wq=8, hk=8, wk=8)
    bad = []
    for name, arr in (("q", q), ("k", kmap), ("v", v)):
        for value in (np.nan, np.inf):
            a = arr.copy()
            a.flat[5] = value
            bad.append({"q": q, "k": kmap, "v": v, name: a})
    far = q.copy()
    far.flat[3] = 1.01  # outside [-1 - 1e-3, 1 + 1e-3]
    bad.append({"q": far, "k": kmap, "v": v})
    bad.append({"q": q, "k": -kmap * 1.5, "v": v})
    neg = v.copy()
    neg.flat[0] = -0.1
    bad.append({"q": q, "k": kmap, "v": neg})
    bad.append({"q": q[:, :1], "k": kmap, "v": v})  # one coordinate channel
    bad.append({"q": q, "k": kmap[..., :7], "v": v})  # K and V disagree
    bad.append({"q": q, "k": kmap, "v": v[:, :, :, :7]})
    bad.append({"q": q[0], "k": kmap, "v": v})  # rank 3
    bad.append({"q": np.concatenate([q, q]), "k": kmap, "v": v})  # N disagrees
    bad.append({"q": q.astype(np.int32), "k": kmap, "v": v})  # integer coordinates
    for inputs in bad:
        with pytest.raises(CoordGANError):
            fn(inputs["q"], inputs["k"], inputs["v"])
    for kw in ({"mode": "nearest"}, {"mode": "topk"}, {"mode": "topk", "k": 0}, {"mode": "topk", "k": 65},
               {"mode": "soft", "k": 3}, {"tau": 0.0}, {"tau": float("nan")}, {"tau": -1}):
        with pytest.raises(CoordGANError):
            fn(q, kmap, v, **kw)
    if fn is lookup_sparse:
        for kw in ({"tol": 0}, {"tol": 1.5}, {"threads": 0}, {"threads": 1.5}, {"dense_above": 2}):
            with pytest.raises(CoordGANError):
                fn(q, kmap, v, **kw)
    # the boundary itself is fine: tanh output rounded to float16 can exceed 1 a little
    edge = q.copy()
    edge.flat[3] = 1.0 + 5e-4
    fn(edge, kmap, v)
