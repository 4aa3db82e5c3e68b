"""Dynamic batching on vs off: coordgan_encoder on the local tritonserver (python backend, CPU).

    python benchmarks/bench_triton_batching.py                          # tiny and celeba-128
    python benchmarks/bench_triton_batching.py --preset celeba-128 --duration 60 --rounds 3

One export per preset (random weights, seed 0, from the `coordgan bench` cache: speed does not
depend on the values), two repositories built from it the way `coordgan triton build --backend
python` does - the same except for dynamic batching (--no-dynamic-batching) - both served at once
by real tritonservers. The load is `coordgan bench triton`'s: closed loop, --concurrency clients,
one image per request. The two servers take turns, one level each per round, so background load
on a shared machine hits both alike; the table shows the median round. Goal: batching on >= 1.5x
the throughput of batching off at concurrency 8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL = 1.5
MODEL = "coordgan_encoder"


def build_repositories(preset: str, workdir: Path, args) -> dict:
    """{'on': repo, 'off': repo} for the preset's encoder export."""
    from export.cache import ModelSource
    from triton_models.repository import BuildOptions, build_repository

    export = ModelSource(preset=preset, seed=0, progress=lambda m: print(f"  {m}", flush=True)).onnx_dir("encoder")
    repos = {}
    for name, batching in (("on", True), ("off", False)):
        options = BuildOptions(backend="python", max_batch=args.max_batch, dynamic_batching=batching,
                               preferred_batch=args.preferred_batch, queue_delay_us=args.queue_delay_us,
                               instances=args.instances, video=False)
        repos[name] = build_repository(export, workdir / f"{preset}-{name}", options).repo
    return repos


def bench_preset(preset: str, workdir: Path, args) -> dict:
    from contextlib import ExitStack

    from runtime.bench.triton_load import LoadOptions, run_level
    from runtime.bench.triton_target import TritonTarget
    from triton_models.server import TritonServer

    print(f"{preset}: building repositories", flush=True)
    repos = build_repositories(preset, workdir, args)
    options = LoadOptions(concurrency=(args.concurrency,), requests=args.requests, duration_s=args.duration,
                          warmup=args.warmup)
    rows = {"on": [], "off": []}
    with ExitStack() as stack:
        targets = {}
        for name, repo in repos.items():
            server = stack.enter_context(TritonServer(repo, http_port=0, grpc_port=0))
            targets[name] = TritonTarget(server.grpc_url, MODEL)
            stack.callback(targets[name].close)
        for r in range(args.rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                row = run_level(targets[name], 1, args.concurrency, options)
                rows[name].append(row)
                print(f"  round {r + 1} batching {name}: {row['throughput'] or 0:.2f} img/s, p50 "
                      f"{row.get('p50_ms', 0):.1f} ms, executed batch {row['server_avg_batch'] or 0:.2f}, "
                      f"errors {row['errors']}", flush=True)
        batching = {name: t.describe_batching() for name, t in targets.items()}
    return {"preset": preset, "rows": rows, "batching": batching}


def median_row(rows: list) -> dict:
    """The round with the median throughput (its latencies come with it)."""
    ranked = sorted(rows, key=lambda r: r.get("throughput") or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def print_table(results: list, args) -> None:
    print()
    print(f"{MODEL}, python backend (ONNX Runtime) on the local tritonserver, CPU; concurrency "
          f"{args.concurrency}, 1 image per request, gRPC; median of {args.rounds} alternating rounds of "
          + (f"{args.duration:g} s" if args.duration else f"{args.requests} requests") + " each (random weights)")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} after timing")
    header = ("| preset | dynamic batching | img/s | p50 ms | p99 ms | executed batch | queue ms | compute ms "
              f"| on/off | goal >= {GOAL}x |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for result in results:
        on, off = median_row(result["rows"]["on"]), median_row(result["rows"]["off"])
        ratio = on["throughput"] / off["throughput"] if on.get("throughput") and off.get("throughput") else None
        for name, r in (("on", on), ("off", off)):
            cells = [result["preset"], name, f"{r.get('throughput') or 0:.2f}", f"{r.get('p50_ms', 0):.1f}",
                     f"{r.get('p99_ms', 0):.1f}", f"{r['server_avg_batch'] or 0:.2f}",
                     f"{r['server_queue_ms'] or 0:.1f}", f"{r['server_compute_infer_ms'] or 0:.1f}"]
            if name == "on" and ratio is not None:
                cells += [f"{ratio:.2f}x", "met" if ratio >= GOAL else "missed"]
            else:
                cells += ["", ""]
            print("| " + " | ".join(cells) + " |")
    for result in results:
        print(f"{result['preset']}: on = {result['batching']['on']}; off = {result['batching']['off']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["tiny", "celeba-128"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level (0: use --requests)")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (with or instead of "
                        "--duration)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up requests per client per level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--preferred-batch", type=lambda t: tuple(int(b) for b in t.split(",")), default=None,
                        help="comma-separated (default: the builder's, 4,8)")
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write every round's rows here")
    args = parser.parse_args()
    args.duration = args.duration or None
    if args.duration is None and args.requests is None:
        parser.error("give --duration or --requests")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-triton-batching-") as tmp:
        for preset in args.preset:
            results.append(bench_preset(preset, Path(tmp), args))
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "args": vars(args), "results": results},
                                        indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
