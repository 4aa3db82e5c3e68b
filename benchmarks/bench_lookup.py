"""Benchmark of the correspondence lookup implementations, ratios taken within one run.

    python benchmarks/bench_lookup.py            # CPU part (1 and 2 threads), then the GPU part if any
    python benchmarks/bench_lookup.py --threads 1 --size 96 --repeat 5
    python benchmarks/bench_lookup.py --skip-gpu --refs 4   # 4 reference maps, as propagation at memory 3
    python benchmarks/bench_lookup.py --skip-cpu   # the GPU part alone

CPU: dense numpy vs the compiled CPU path (runtime.lookup.lookup_sparse; numba kernels) at
128x128, C = 8, R = 1, tau = 0.01, on smooth random warps of the canonical grid (what a warping
network produces): its per-query cut ("sparse"), and every pair compiled ("every pair", the path it
takes where the cut cannot pay: collapsed maps, a large tau; forced here with dense_above=0). Same
inputs, same thread count for all: each thread count runs in its own process with
OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = threads (the dense path's GEMM) and ``threads=`` for the
compiled ones; the runs are interleaved and the best of each is kept.

GPU (skipped with a message without one): the fused kernel (runtime.lookup.cuda) vs the torch
formulation of the paper (differences, norm, softmax, einsum; chunked over queries so it fits)
vs torch.compile of that vs the sparse kernels (runtime.lookup.cuda_sparse, neglected mass <= --tol),
at 128x128, N = 8, C = 8, timed with CUDA events. Also prints the
arithmetic floor of the op on this GPU: per (query, reference) pair one sqrt and one exp on the
special-function units (16 per SM per clock) and C FMAs on the FP32 lanes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# BLAS threads are fixed when numpy loads: a child process per thread count (see cpu_part) sets them
# through --cpu-child; otherwise one thread, so OpenBLAS's spinning threads do not skew a busy machine.
if "--cpu-child" in sys.argv:
    _threads = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import cuda_driver  # noqa: E402
from runtime.bench.report import text_table  # noqa: E402
from runtime.bench.workload import warp_maps as warp  # noqa: E402
from runtime.lookup import cuda as cl  # noqa: E402
from runtime.lookup import lookup_dense, lookup_sparse  # noqa: E402


def make_inputs(rng, n: int, size: int, c: int, r: int = 1):
    q = warp(rng, n, size, size)
    k = warp(rng, n * r, size, size).reshape(n, r, 2, size, size)
    v = rng.dirichlet(np.full(c, 0.3), size=(n, r, size, size)).astype(np.float32).transpose(0, 1, 4, 2, 3)
    return q, k, np.ascontiguousarray(v)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# --------------------------------------------------------------------------------------------------


def cpu_child(args) -> None:
    """One thread count, in this process (BLAS threads already set): prints one JSON line."""
    threads = int(args.threads)
    rng = np.random.default_rng(args.seed)
    q, k, v = make_inputs(rng, 1, args.size, args.classes, args.refs)
    t0 = time.perf_counter()
    lookup_sparse(q[..., :16, :16], k[..., :16, :16], v[..., :16, :16], tau=0.001, threads=threads)
    first_call = time.perf_counter() - t0  # numba: compile, or load from its on-disk cache
    info, every_info = {}, {}
    t_dense = t_sparse = t_every = math.inf
    for _ in range(args.dense_repeat):  # interleaved rounds: load from other processes hits all alike
        t, (p_d, l_d) = best_of(lambda: lookup_dense(q, k, v, tau=args.tau), 1)
        t_dense = min(t_dense, t)
        t, (p_s, l_s) = best_of(
            lambda: lookup_sparse(q, k, v, tau=args.tau, tol=args.tol, threads=threads, info=info), args.repeat)
        t_sparse = min(t_sparse, t)
        t, (p_e, l_e) = best_of(lambda: lookup_sparse(q, k, v, tau=args.tau, threads=threads, dense_above=0.0,
                                                      info=every_info), 1)
        t_every = min(t_every, t)
    assert every_info["path"] == "dense"
    print(json.dumps({
        "threads": threads, "dense_s": t_dense, "sparse_s": t_sparse, "every_s": t_every,
        "pairs": info["dense_pairs"],  # every (query, reference pixel) pair, all reference maps
        "sparse_pairs": info["pairs"], "path": info["path"], "max_dp": float(np.abs(p_s - p_d).max()),
        "agree": float((l_s == l_d).mean()), "every_max_dp": float(np.abs(p_e - p_d).max()),
        "every_agree": float((l_e == l_d).mean()), "first_call_s": first_call,
    }))


def cpu_part(args) -> None:
    thread_counts = [int(t) for t in str(args.threads).split(",")]
    print(f"CPU: Q (1, 2, {args.size}, {args.size}), K (1, {args.refs}, 2, {args.size}, {args.size}), "
          f"C {args.classes}, tau {args.tau}, tol {args.tol}, seed {args.seed}")
    rows, notes = [], []
    for threads in thread_counts:
        cmd = [sys.executable, __file__, "--cpu-child", "--threads", str(threads), "--size", str(args.size),
               "--classes", str(args.classes), "--refs", str(args.refs), "--tau", str(args.tau), "--tol", str(args.tol),
               "--repeat", str(args.repeat), "--dense-repeat", str(args.dense_repeat), "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"CPU benchmark with {threads} thread(s) failed:\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([str(threads), "dense numpy", f"{r['dense_s'] * 1e3:.1f}", f"{r['pairs'] / 1e6:.1f}",
                     f"{r['dense_s'] / r['pairs'] * 1e9:.2f}", "1.0x", "-", "-"])
        rows.append([str(threads), "every pair (numba)", f"{r['every_s'] * 1e3:.1f}", f"{r['pairs'] / 1e6:.1f}",
                     f"{r['every_s'] / r['pairs'] * 1e9:.2f}", f"{r['dense_s'] / r['every_s']:.1f}x",
                     f"{r['every_max_dp']:.2e}", f"{r['every_agree'] * 100:.3f}%"])
        rows.append([str(threads), f"sparse ({r['path']})", f"{r['sparse_s'] * 1e3:.1f}", f"{r['sparse_pairs'] / 1e6:.2f}",
                     f"{r['sparse_s'] / r['sparse_pairs'] * 1e9:.2f}", f"{r['dense_s'] / r['sparse_s']:.1f}x",
                     f"{r['max_dp']:.2e}", f"{r['agree'] * 100:.3f}%"])
        notes.append(f"{threads} thread(s): sparse evaluated {r['sparse_pairs'] / r['pairs'] * 100:.2f}% of the pairs "
                     f"({r['sparse_pairs'] / (args.size * args.size):.0f} per query); first sparse call in the "
                     f"process {r['first_call_s']:.2f} s (numba compile, or its disk cache)")
    print(text_table(rows, ["threads", "method", "ms", "Mpairs", "ns/pair", "speedup", "max|dP|", "labels agree"]))
    print(f"(best of {args.dense_repeat} dense and every-pair / {args.dense_repeat * args.repeat} sparse runs, interleaved; "
          "OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = threads)")
    print("\n".join(notes))


# --------------------------------------------------------------------------------------------------


def _fp32_lanes_per_sm(major: int, minor: int) -> int:
    # FP32 FMA lanes per SM: 64 on Volta/Turing/A100, 128 on GA10x, Ada, Hopper, Blackwell.
    return 64 if (major, minor) in {(7, 0), (7, 2), (7, 5), (8, 0)} else 128


def gpu_part(args) -> None:
    try:
        import torch
    except ImportError:
        print("GPU: skipped (torch is not installed; it provides the baseline)")
        return
    if not torch.cuda.is_available() or not cl.available():
        print("GPU: skipped (no CUDA GPU, or cuda-python missing)")
        return
    from coordgan.correspondence import lookup as reference

    n, size, c, tau = args.gpu_batch, args.size, args.classes, args.tau
    rng = np.random.default_rng(args.seed)
    q, k, v = (torch.from_numpy(a).cuda() for a in make_inputs(rng, n, size, c))
    hq = wq = hk = wk = size
    m = hk * wk
    props = torch.cuda.get_device_properties(0)
    print(f"\nGPU: {props.name}, Q {tuple(q.shape)}, K {tuple(k.shape)}, V {tuple(v.shape)}, tau {tau}")

    qf = q.flatten(2).transpose(1, 2).contiguous()  # (N, HqWq, 2)
    kf = k.permute(0, 1, 3, 4, 2).reshape(n, m, 2).contiguous()
    vf = v.permute(0, 1, 3, 4, 2).reshape(n, m, c).contiguous()

    def paper_chunk(qc, kf, vf):
        dist = torch.norm(qc.unsqueeze(2) - kf.unsqueeze(1), dim=3)
        return torch.einsum("nim,nmc->nic", torch.softmax(-dist / tau, dim=2), vf)

    chunk = max(1, (1 << 28) // (n * m * 2))  # ~1 GiB of differences per chunk

    def run_torch(fn):
        return torch.cat([fn(qf[:, s : s + chunk], kf, vf) for s in range(0, hq * wq, chunk)], dim=1)

    compiled = torch.compile(paper_chunk, dynamic=False)
    p_out = torch.empty(n, c, hq, wq, device="cuda")
    l_out = torch.empty(n, hq, wq, dtype=torch.int32, device="cuda")

    def run_kernel():
        cl.lookup_device(q.data_ptr(), k.data_ptr(), v.data_ptr(), p_out.data_ptr(), l_out.data_ptr(), n=n, hq=hq,
                         wq=wq, r=1, hk=hk, wk=wk, c=c, tau=tau, mode="soft",
                         stream=torch.cuda.current_stream().cuda_stream)
        return p_out

    def timed(fn, repeat):
        fn()  # warm-up: compilation, autotuning, module load
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return min(times)

    from runtime.lookup import cuda_sparse

    p_sparse = torch.empty_like(p_out)

    def run_sparse():  # the sparse kernels (workspace from the stream-ordered allocator each call)
        cuda_sparse.lookup_device(q.data_ptr(), k.data_ptr(), v.data_ptr(), p_sparse.data_ptr(), l_out.data_ptr(),
                                  n=n, hq=hq, wq=wq, r=1, hk=hk, wk=wk, c=c, tau=tau, mode="soft", tol=args.tol,
                                  stream=torch.cuda.current_stream().cuda_stream)
        return p_sparse

    t_kernel = timed(run_kernel, args.repeat)
    t_sparse = timed(run_sparse, args.repeat)
    sparse_err = (p_sparse - reference(q, k, v, tau=tau)[0]).abs().max().item()
    sparse_info: dict = {}
    cuda_sparse.lookup_numpy(*(a.cpu().numpy() for a in (q, k, v)), tau=tau, tol=args.tol, info=sparse_info)
    t_eager = timed(lambda: run_torch(paper_chunk), args.repeat)
    try:
        t_compiled = timed(lambda: run_torch(compiled), args.repeat)
    except Exception as exc:  # no triton / compiler: report, keep going
        print(f"(torch.compile failed: {type(exc).__name__}: {exc})")
        t_compiled = math.nan
    p_ref, _ = reference(q, k, v, tau=tau)
    err = (p_out - p_ref).abs().max().item()

    # Arithmetic floor: 1 sqrt + 1 exp per pair on 16 SFU lanes per SM, C FMAs per pair on FP32 lanes.
    pairs = n * hq * wq * m
    driver, _ = cuda_driver.context()
    attr = driver.CUdevice_attribute
    clock_khz = None
    try:
        dev = cuda_driver.check(driver.cuCtxGetDevice(), "cuCtxGetDevice")
        clock_khz = cuda_driver.check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev), "clock")
    except Exception:
        pass
    rows = [
        ["fused kernel", f"{t_kernel:.3f}", f"{pairs / t_kernel / 1e6:.1f}", "1.0x"],
        ["torch eager (norm+softmax+einsum)", f"{t_eager:.3f}", f"{pairs / t_eager / 1e6:.1f}",
         f"{t_eager / t_kernel:.1f}x"],
        ["torch.compile of the same", f"{t_compiled:.3f}", f"{pairs / t_compiled / 1e6:.1f}",
         f"{t_compiled / t_kernel:.1f}x"],
        [f"sparse kernels (tol {args.tol:g})", f"{t_sparse:.3f}", f"{pairs / t_sparse / 1e6:.1f}",
         f"{t_sparse / t_kernel:.3f}x"],
    ]
    if clock_khz:
        sms, hz = props.multi_processor_count, clock_khz * 1e3
        sfu_ms = 2 * pairs / (16 * sms * hz) * 1e3
        fma_ms = c * pairs / (_fp32_lanes_per_sm(props.major, props.minor) * sms * hz) * 1e3
        floor = max(sfu_ms, fma_ms)
        rows.append(["arithmetic floor", f"{floor:.3f}", f"{pairs / floor / 1e6:.1f}", f"{floor / t_kernel:.2f}x"])
        note = (f"floor: {sms} SMs at {hz / 1e9:.2f} GHz; SFU (sqrt+exp) {sfu_ms:.3f} ms, FMA (C={c}) {fma_ms:.3f} ms; "
                f"kernel at {floor / t_kernel * 100:.0f}% of it")
    else:
        note = "floor: the driver did not report a clock rate"
    print(text_table(rows, ["implementation", "ms", "Gpairs/s", "time / kernel"]))
    print(f"{note}\nkernel vs reference max|dP| = {err:.2e} (best of {args.repeat}, CUDA events)")
    print(f"sparse kernels: {t_kernel / t_sparse:.1f}x the fused kernel's speed, evaluating "
          f"{sparse_info['pairs'] / sparse_info['dense_pairs']:.2%} of the pairs; vs reference max|dP| = "
          f"{sparse_err:.2e} (bound {args.tol:g} x max V); Gpairs/s counts every pair it accounts for")
    print(sparse_stages(run_sparse, args.repeat))


def sparse_stages(run_sparse, repeat: int) -> str:
    """Where one sparse lookup's time goes: each kernel's device time (CUPTI sees the cuda-python
    launches too) and the host time of launching them all from Python, the best of `repeat` calls."""
    import torch

    host = math.inf
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_sparse()
        host = min(host, (time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run_sparse()
            torch.cuda.synchronize()
        stages = [(e.key, getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0))
                  for e in prof.key_averages() if e.key.startswith("cls_")]
    except Exception as exc:  # a profiler that cannot run here: keep the rest of the report
        return f"sparse stages: not measured ({type(exc).__name__}: {exc}); host launches {host:.3f} ms"
    parts = ", ".join(f"{name} {us / 1e3:.3f}" for name, us in stages)
    return (f"sparse stages (device ms, one call): {parts}; sum {sum(us for _, us in stages) / 1e3:.3f} ms; "
            f"launched from Python in {host:.3f} ms (host)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="query and reference maps are size x size")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--refs", type=int, default=1, help="CPU: reference maps (propagation's memory 3 looks up 4)")
    parser.add_argument("--tau", type=float, default=0.01)
    parser.add_argument("--tol", type=float, default=1e-4, help="sparse path: neglected softmax mass per query")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense-repeat", type=int, default=3, help="interleaved rounds (one dense run each)")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="1,2", help="CPU thread counts, comma-separated (one process each)")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--cpu-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_child:
        cpu_child(args)
        return
    if not args.skip_cpu:
        cpu_part(args)
    if not args.skip_gpu:
        gpu_part(args)


if __name__ == "__main__":
    main()
