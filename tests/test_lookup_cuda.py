"""The fused CUDA lookup kernel against the torch reference, on a real GPU (skipped without one).

Every run draws fresh inputs (the seed is printed on failure; LOOKUP_TEST_SEED replays it): smooth
random warps, 32^2..128^2 pixels, R = 1..4 references, several class counts, every mode, float32
and float16. Output buffers are poisoned (0xFF bytes: NaN floats, label -1) before each launch, so
an element the kernel forgets to write shows up.

Tolerances: soft/topk use sqrt.approx/ex2.approx in the kernel, whose ~1e-7 relative errors the
1/tau = 100 amplification turns into ~1e-6..1e-5 on P: atol 1e-4. hard copies V of the nearest
pixel, chosen on correctly rounded distances: exact (a 1-ulp difference in d^2 between two
framework builds could still flip a near tie, hence the 1e-4 mismatch allowance).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from runtime import cuda_driver
from runtime.lookup import cuda as cl

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
from coordgan.correspondence import canonical_grid  # noqa: E402
from coordgan.correspondence import lookup as reference  # noqa: E402

if not cl.available():
    pytest.skip("no CUDA GPU with cuda-python here", allow_module_level=True)


@pytest.fixture(scope="module")
def seed():
    return int(os.environ.get("LOOKUP_TEST_SEED", np.random.SeedSequence().entropy % 2**32))


def warp(rng, n, h, w, amp=0.12):
    g = canonical_grid(h, w).numpy()
    out = np.empty((n, 2, h, w), np.float32)
    for i in range(n):
        ph = rng.uniform(0, 2 * np.pi, 4)
        fr = rng.uniform(0.5, 2.0, 4)
        dx = amp * np.sin(np.pi * fr[0] * g[1] + ph[0]) * np.cos(np.pi * fr[1] * g[0] + ph[1])
        dy = amp * np.sin(np.pi * fr[2] * g[0] + ph[2]) * np.cos(np.pi * fr[3] * g[1] + ph[3])
        noise = rng.normal(0, 0.004, (2, h, w))
        out[i, 0] = np.clip(g[0] + dx + noise[0], -1, 1)
        out[i, 1] = np.clip(g[1] + dy + noise[1], -1, 1)
    return out


def draw_case(rng, mode, dtype):
    n = int(rng.integers(1, 3))
    hq, wq, hk, wk = (int(s) for s in rng.integers(32, 129, 4))
    r = int(rng.integers(1, 5))
    c = int(rng.choice([1, 3, 8, 17, 64]))
    q = warp(rng, n, hq, wq)
    kmap = warp(rng, n * r, hk, wk).reshape(n, r, 2, hk, wk)
    v = rng.dirichlet(np.full(c, 0.3), size=(n, r, hk, wk)).astype(np.float32).transpose(0, 1, 4, 2, 3)
    k = int(rng.integers(1, cl.TOPK_MAX + 1)) if mode == "topk" else None
    return [np.ascontiguousarray(a, dtype) for a in (q, kmap, v)], k


class DeviceBuffers:
    """cuda-python allocations for one launch; outputs poisoned with 0xFF bytes."""

    def __init__(self, inputs, c):
        self.driver, _ = cuda_driver.context()
        q, kmap, v = inputs
        n, hq, wq = q.shape[0], q.shape[2], q.shape[3]
        self.p = np.empty((n, c, hq, wq), np.float32)
        self.labels = np.empty((n, hq, wq), np.int32)
        self.arrays = [q, kmap, v, self.p, self.labels]
        self.ptrs = [cuda_driver.check(self.driver.cuMemAlloc(a.nbytes), "cuMemAlloc") for a in self.arrays]
        for a, d in zip(self.arrays[:3], self.ptrs[:3]):
            cuda_driver.check(self.driver.cuMemcpyHtoD(d, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        for a, d in zip(self.arrays[3:], self.ptrs[3:]):
            cuda_driver.check(self.driver.cuMemsetD8(d, 0xFF, a.nbytes), "cuMemsetD8")

    def fetch(self):
        cuda_driver.check(self.driver.cuCtxSynchronize(), "cuCtxSynchronize")
        for a, d in zip(self.arrays[3:], self.ptrs[3:]):
            cuda_driver.check(self.driver.cuMemcpyDtoH(a.ctypes.data, d, a.nbytes), "cuMemcpyDtoH")
        return self.p, self.labels

    def free(self):
        for d in self.ptrs:
            self.driver.cuMemFree(d)


def run_reference(inputs, mode, k):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, kmap, v = (torch.from_numpy(a).to(dev) for a in inputs)
    p, labels = reference(q, kmap, v, mode=mode, k=k)
    return p.cpu().numpy(), labels.cpu().numpy()


def compare(p, labels, p_ref, l_ref, mode, c, msg):
    assert np.isfinite(p).all(), f"unwritten (NaN) outputs: {msg}"
    assert ((labels >= 0) & (labels < c)).all(), f"unwritten labels: {msg}"
    if mode == "hard":
        same = (p == p_ref).all(axis=1)
        assert same.mean() >= 1 - 1e-4, f"hard picks differ on {(~same).sum()} pixels: {msg}"
        assert (labels == l_ref).mean() >= 1 - 1e-4, msg
        return
    err = np.abs(p - p_ref).max()
    assert err <= 1e-4, f"max |dP| {err:.3g}: {msg}"
    top2 = np.sort(p_ref, axis=1)[:, -2:] if c > 1 else None
    clear = np.ones(labels.shape, bool) if top2 is None else (top2[:, 1] - top2[:, 0]) > 1e-3
    assert np.array_equal(labels[clear], l_ref[clear]), msg


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["soft", "hard", "topk"])
def test_kernel_matches_reference(seed, mode, dtype):
    rng = np.random.default_rng([seed, ["soft", "hard", "topk"].index(mode), np.dtype(dtype).itemsize])
    for trial in range(3):
        inputs, k = draw_case(rng, mode, dtype)
        q, kmap, v = inputs
        n, r, c, hk, wk = v.shape
        msg = f"seed {seed}, trial {trial}, mode {mode}, {np.dtype(dtype)}, Q {q.shape}, K {kmap.shape}, C {c}, k {k}"
        bufs = DeviceBuffers(inputs, c)
        try:
            cl.lookup_device(*(int(d) for d in bufs.ptrs), n=n, hq=q.shape[2], wq=q.shape[3], r=r, hk=hk, wk=wk,
                             c=c, dtype=dtype, tau=0.01, mode=mode, k=k)
            p, labels = bufs.fetch()
        finally:
            bufs.free()
        p_ref, l_ref = run_reference(inputs, mode, k)
        compare(p, labels, p_ref, l_ref, mode, c, msg)


def test_numpy_convenience_and_ties(seed):
    """lookup_numpy end to end, on the identity grid (exact ties: lowest j must win)."""
    g = canonical_grid(33, 41).numpy()[None]
    kmap = np.stack([g[0], g[0]])[None]
    v = np.zeros((1, 2, 3, 33, 41), np.float32)
    v[0, 0, 0] = 1.0
    v[0, 1, 2] = 1.0
    p, labels = cl.lookup_numpy(g, kmap, v, mode="hard")
    assert (labels == 0).all() and np.array_equal(p[0], v[0, 0])
    rng = np.random.default_rng(seed)
    inputs, _ = draw_case(rng, "soft", np.float32)
    p, labels = cl.lookup_numpy(*inputs, tau=0.02)
    p_ref, _ = reference(*(torch.from_numpy(a) for a in inputs), tau=0.02)
    assert np.abs(p - p_ref.numpy()).max() <= 1e-4, f"seed {seed}"


def test_torch_memory_and_stream(seed):
    """Raw pointers and the stream of another framework (torch) work as they are."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    rng = np.random.default_rng(seed)
    (q, kmap, v), _ = draw_case(rng, "soft", np.float32)
    tq, tk, tv = (torch.from_numpy(a).cuda() for a in (q, kmap, v))
    n, r, c, hk, wk = v.shape
    p = torch.full((n, c, q.shape[2], q.shape[3]), float("nan"), device="cuda")
    labels = torch.full((n, q.shape[2], q.shape[3]), -1, dtype=torch.int32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cl.lookup_device(tq.data_ptr(), tk.data_ptr(), tv.data_ptr(), p.data_ptr(), labels.data_ptr(), n=n,
                         hq=q.shape[2], wq=q.shape[3], r=r, hk=hk, wk=wk, c=c, mode="soft",
                         stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.current_stream().wait_stream(stream)
    p_ref, l_ref = reference(tq, tk, tv)
    assert torch.isfinite(p).all()
    assert (p - p_ref).abs().max().item() <= 1e-4, f"seed {seed}"


@pytest.mark.parametrize("mode", ["soft", "hard", "topk"])
def test_sparse_kernels_match_the_reference_and_their_host_build(seed, mode):
    """runtime.lookup.cuda_sparse on the GPU: within the bound of the reference (soft), the dense
    result (hard, topk), and what the same kernels built for the CPU give (tests/test_lookup_cuda_sparse.py)."""
    from runtime.lookup import cuda_sparse

    rng = np.random.default_rng([seed, 11, ["soft", "hard", "topk"].index(mode)])
    for trial in range(3):
        inputs, k = draw_case(rng, mode, np.float32)
        c = inputs[2].shape[2]
        msg = f"seed {seed}, trial {trial}, mode {mode}, Q {inputs[0].shape}, K {inputs[1].shape}, C {c}, k {k}"
        info: dict = {}
        p, labels = cuda_sparse.lookup_numpy(*inputs, mode=mode, k=k, info=info)
        compare(p, labels, *run_reference(inputs, mode, k), mode, c, msg)
        assert 0 < info["pairs"] < info["dense_pairs"], msg
        p_host, _ = cuda_sparse.lookup_numpy(*inputs, mode=mode, k=k, kernels="host")
        assert np.abs(p - p_host).max() <= 1e-4, msg


@pytest.mark.parametrize("impl", ["cuda", "cuda-sparse"])
@pytest.mark.parametrize("mode", ["soft", "hard", "topk"])
def test_impl_on_torch_tensors(seed, impl, mode):
    """coordgan.correspondence.lookup(impl=...): the kernels behind the torch API, on torch's memory and
    a side stream, against the reference."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    rng = np.random.default_rng([seed, 7, ["soft", "hard", "topk"].index(mode), impl == "cuda-sparse"])
    inputs, k = draw_case(rng, mode, np.float16 if mode == "soft" else np.float32)
    tq, tk, tv = (torch.from_numpy(a).cuda() for a in inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        p, labels = reference(tq, tk, tv, mode=mode, k=k, impl=impl)
    torch.cuda.current_stream().wait_stream(stream)
    p_ref, l_ref = reference(tq, tk, tv, mode=mode, k=k)
    assert p.is_cuda and p.dtype == torch.float32 and labels.dtype == torch.int32
    compare(p.cpu().numpy(), labels.cpu().numpy(), p_ref.cpu().numpy(), l_ref.cpu().numpy(), mode, tv.shape[2],
            f"seed {seed}, {impl}, mode {mode}, k {k}")
