"""`coordgan propagate` on ONNX Runtime, OpenVINO and `--backend auto`, side by side in one run.

    python benchmarks/bench_openvino.py                         # celeba-128, 96 frames, spread maps, exact + --int8
    python benchmarks/bench_openvino.py --frames 48 --encoders exact --repeat 1

For each encoder (the exact export, and the --int8 one) on spread maps (bench_propagate.py's graft:
a trained model's smooth maps, the encoder and warping network still computed in full), the real
command in a fresh process with its defaults (batch 8, memory 3, tau 0.01, overlap on) and each
--backend, the runs interleaved (backend after backend, then again), the fastest of --repeat kept;
the stage columns come from the run's summary.json (frames/s: its frames over the pass's wall time),
"command s" is the whole process (start-up, opening the encoder, the pass) as the caller timed it. Before them, the encoder alone: ms per frame at
batch 8 in this process, both backends timed alternately (the numbers auto's trial compares).

    python benchmarks/bench_openvino.py --base 8779715        # also `--backend auto` as of that revision

--base REV adds, interleaved with the others, a row per encoder running REV's code (a git worktree;
one untimed run first compiles its kernels), and prints the lookup stage's ratio against this tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_propagate import STAGES, first_mask, run, spread_encoder  # noqa: E402

BACKENDS = ("onnxruntime", "openvino", "auto")


def encoder_ms(path: Path, batch: int = 8, rounds: int = 5) -> dict[str, float]:
    """ms per frame of each backend on one batch of `batch`, best of `rounds` alternating runs."""
    from runtime.backends import open_backend
    from runtime.backends.auto import time_backends, trial_feeds

    opened = [open_backend(path, backend=name, device="cpu") for name in ("onnxruntime", "openvino")]
    try:
        seconds = time_backends(opened, trial_feeds(opened[0], batch), runs=rounds)
    finally:
        for backend in opened:
            backend.close()
    return {name: 1e3 * s / batch for name, s in seconds.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="celeba-128")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--encoders", default="exact,int8", help="exact and/or int8")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (the fastest is shown)")
    parser.add_argument("--base", help="a git revision whose `--backend auto` runs beside this tree's")
    args = parser.parse_args(argv)
    if args.base and "auto" not in args.backends.split(","):
        parser.error("--base compares REV's --backend auto with this tree's: keep auto in --backends")
    with base_tree(args.base) as base, tempfile.TemporaryDirectory(prefix="coordgan-bench-openvino-") as work:
        measure(args, base, Path(work))


@contextlib.contextmanager
def base_tree(rev: str | None):
    """A temporary git worktree of rev (None: no base)."""
    if rev is None:
        yield None
        return
    tree = Path(tempfile.mkdtemp(prefix="coordgan-bench-base-"))
    try:
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev],
                               capture_output=True, text=True)
        if added.returncode != 0:
            raise SystemExit(f"--base {rev}: {added.stderr.strip()}")
        yield tree
    finally:  # the worktree, or whatever of it git left, and git's record of it
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


def measure(args, base: Path | None, work: Path) -> None:

    from coordgan.data.synthetic_faces import make_sequence
    from export.cache import ModelSource
    from export.onnx_export import ExportOptions, export_onnx
    from runtime.bench.report import text_table
    from runtime.io.masks import DAVIS_PALETTE, write_mask
    from runtime.io.video import VideoWriter

    source = ModelSource(preset=args.preset, seed=0, progress=lambda m: print(f"  {m}", flush=True))
    encoders = {}
    for kind in args.encoders.split(","):
        if kind == "exact":
            export = source.onnx_dir("encoder")
        else:
            options = ExportOptions(only="encoder", int8=True, verify_batches=(1,))
            export = export_onnx(source.checkpoint(), work / "export-int8", options).directory
        folder = work / kind
        folder.mkdir()
        encoders[kind] = spread_encoder(export, folder)
    frames, masks = make_sequence(args.frames, 128, seed=7)
    video = work / "faces.mp4"
    with VideoWriter(video, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    ref = work / "first.png"
    write_mask(ref, first_mask("parts", masks[0]), DAVIS_PALETTE)

    print(f"encoder alone, batch 8, ms per frame ({args.preset}, spread-map graft, 2 threads unless capped):")
    rows = [[kind, *(f"{v:.1f}" for v in encoder_ms(path).values())] for kind, path in encoders.items()]
    print(text_table(rows, ["encoder", "onnxruntime", "openvino"]))

    cases = [(backend, backend, ROOT) for backend in args.backends.split(",")]
    if base is not None:
        label = f"auto @ {args.base}"
        cases.append((label, "auto", base))
        warm = work / "warm.mp4"  # 16 frames, untimed: compiles the base's kernels
        with VideoWriter(warm, fps=12) as writer:
            for frame in frames[:16]:
                writer.write(frame)
        for kind, path in encoders.items():
            run(warm, path, ref, work / f"warm-{kind}", ["--backend", "auto"], tree=base)
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):
        for kind, path in encoders.items():
            for name, backend, tree in cases:
                s = run(video, path, ref, work / f"out-{kind}-{backend}-{tree.name}", ["--backend", backend], tree=tree)
                key = (kind, name)
                if key not in best or s["frames_per_s"] > best[key]["frames_per_s"]:
                    best[key] = s
    header = ["encoder", "--backend", "ran on", "frames/s", "ms/frame"] + [f"{s} ms" for s in STAGES] + ["command s"]
    rows = []
    for (kind, backend), s in best.items():
        n = s["frames_processed"]
        ran = s["model"].split(":")[0].split(" (")[0]  # "openvino on cpu"
        rows.append([kind, backend, ran, f"{s['frames_per_s']:.2f}", f"{1e3 * s['seconds']['total'] / n:.1f}",
                     *(f"{1e3 * s['seconds'].get(k, 0.0) / n:.1f}" for k in STAGES), f"{s['command_s']:.2f}"])
    print(f"\n`coordgan propagate` {args.frames} frames 128x128, spread maps, defaults, best of {args.repeat}:")
    print(text_table(rows, header))
    for (kind, backend), s in best.items():
        if backend == "auto":
            print(f"  {kind} auto: {s['model'].split(': (')[0]}")
    if base is not None:
        for kind in encoders:
            before, after = (best[(kind, key)]["seconds"]["lookup"] for key in (label, "auto"))
            print(f"  {kind}: lookup {before / after:.2f}x faster than at {args.base}, frames/s "
                  f"{best[(kind, label)]['frames_per_s']:.2f} -> {best[(kind, 'auto')]['frames_per_s']:.2f}")


if __name__ == "__main__":
    main()
