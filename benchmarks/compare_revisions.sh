#!/usr/bin/env bash
# Before / after on one machine in one run: the project's own benchmarks on a base revision and on
# the working tree, alternating round by round so that load drifts hit both alike.
#
#   bash benchmarks/compare_revisions.sh BASE [ROUNDS]      (default 2 rounds; results in out/compare-BASE/)
#
# Per round and side: `coordgan bench encoder` and `coordgan bench lookup` (celeba-128, ONNX Runtime
# / numpy on the CPU, 2 threads), benchmarks/bench_lookup.py --skip-gpu, and `coordgan propagate`
# of a 48-frame synthetic-faces video with a tiny export (frames/s from its summary.json). Then
# `coordgan bench compare` of each side's best round. Each side runs its own code (PYTHONPATH) with
# its own export cache; the venv is the working tree's.
set -euo pipefail
base=${1:?usage: compare_revisions.sh BASE [ROUNDS]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
out=${OUT:-$here/out/compare-$base}
mkdir -p "$out"
wt=$(mktemp -d)
git -C "$here" worktree add --detach -f "$wt" "$base" >/dev/null
trap 'git -C "$here" worktree remove --force "$wt"' EXIT
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1

cg() {  # cg SIDE ARGS...: the coordgan CLI of that side's tree
    local side=$1; shift
    local tree=$here; [ "$side" = base ] && tree=$wt
    PYTHONPATH=$tree XDG_CACHE_HOME=$out/cache-$side COORDGAN_CACHE=$out/cache-$side/coordgan \
        "$py" -c 'import sys; sys.argv[0] = "coordgan"; from coordgan.cli import main; main()' "$@"
}

# the same tiny export, video and first mask for both sides (made with the working tree)
"$py" - "$out" <<'PY'
import sys
from pathlib import Path

import torch

from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.data.synthetic_faces import make_sequence
from coordgan.models import build
from export.onnx_export import ExportOptions, export_onnx
from runtime.io.masks import DAVIS_PALETTE, write_mask
from runtime.io.video import VideoWriter

out = Path(sys.argv[1])
if not (out / "tiny" / "encoder.onnx").is_file():
    torch.manual_seed(0)
    ckpt = save(out / "tiny.safetensors", PRESETS["tiny"], build(PRESETS["tiny"], which=("g", "e")))
    export_onnx(ckpt, out / "tiny", ExportOptions(only="encoder", overwrite=True, verify=False))
frames, masks = make_sequence(48, 128, 7)
with VideoWriter(out / "faces.mp4", fps=12) as writer:
    for frame in frames:
        writer.write(frame)
write_mask(out / "first.png", masks[0], DAVIS_PALETTE)
PY

for r in $(seq "$rounds"); do
    for side in base head; do
        echo "=== round $r: $side"
        cg $side bench encoder --preset celeba-128 --backends ort-cpu --batch 1,8 --warmup 2 --iters 10 \
            --threads 2 --json "$out/encoder-$side-$r.json" >"$out/encoder-$side-$r.log" 2>&1
        cg $side bench lookup --preset celeba-128 --backends ort-cpu --batch 1,8 --warmup 2 --iters 10 \
            --json "$out/lookup-$side-$r.json" >"$out/lookup-$side-$r.log" 2>&1
        tree=$here; [ $side = base ] && tree=$wt
        (cd "$tree" && PYTHONPATH=$tree "$py" benchmarks/bench_lookup.py --skip-gpu) >"$out/bench_lookup-$side-$r.txt" 2>&1
        cg $side propagate "$out/faces.mp4" --model "$out/tiny/encoder.onnx" --ref "$out/first.png" \
            --out "$out/masks-$side" --overwrite >"$out/propagate-$side-$r.log" 2>&1
        "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["frames_per_s"])' \
            "$out/masks-$side/summary.json" >"$out/propagate-$side-$r.fps"
    done
done

best() {  # best KIND SIDE: the round with the highest mean throughput
    "$py" - "$out" "$1" "$2" "$rounds" <<'PY'
import json, sys
out, kind, side, rounds = sys.argv[1:5]
runs = [f"{out}/{kind}-{side}-{r}.json" for r in range(1, int(rounds) + 1)]
score = lambda p: sum(r.get("throughput") or 0 for r in json.load(open(p))["rows"] if r.get("status") == "ok")
print(max(runs, key=score))
PY
}
for kind in encoder lookup; do
    cg head bench compare "$(best $kind base)" "$(best $kind head)" --json "$out/compare-$kind.json"
done
echo "bench_lookup.py (speedup = sparse vs dense, same run):"
grep -H "sparse (sparse)" "$out"/bench_lookup-*.txt || true
echo "propagate, tiny export, 48 frames 128x128, frames/s per round:"
for side in base head; do echo "$side: $(cat "$out"/propagate-$side-*.fps | tr '\n' ' ')"; done
echo "masks identical: $(cmp -s <(cat "$out"/masks-base/*.png) <(cat "$out"/masks-head/*.png) && echo yes || echo NO)"
