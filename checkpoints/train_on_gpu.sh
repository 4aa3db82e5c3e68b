#!/usr/bin/env bash
# One device call makes the tiny checkpoint: train the generator for most of the budget, then the
# encoder, score them (eval-propagation, demo), and copy the newest checkpoints and logs into $OUT
# every minute or so, so that a call cut off at its limit still returns a usable checkpoint.
#
#   OUT=DIR checkpoints/train_on_gpu.sh             GPU: a 500 s budget, for one device call of 9 minutes
#   OUT=DIR checkpoints/train_on_gpu.sh --cpu 45    CPU mode, a budget of seconds (the test suite runs it)
#
# Overrides (environment): PRESET (tiny), BATCH (GPU 256), AMP (GPU 1: bf16 autocast), LPIPS (GPU vgg),
# BUDGET_S, GEN_SHARE / ENC_SHARE (of the budget; 0.66 / 0.18), SNAPSHOT_S (60), WORK (scratch
# folder), PY (python3). Run from anywhere; it works in the repository it lives in.
#
# What comes back in $OUT (at most 8 files, each replaced whole):
#   encoder.safetensors            g_ema + encoder: the model `coordgan.load` opens, the file to ship
#   generator.safetensors          g, g_ema, d, d_patch of the newest generator checkpoint
#   generator.state.safetensors    its optimizer and loader state (`coordgan train --resume` goes on)
#   logs.tar.gz                    train.log, log.jsonl and run.json of both runs, the last sample grid,
#                                  eval.json / eval.png, demo.json / strip.png
#   summary.json                   device, minutes, steps, images seen, images/s, the scores
#   run.log                        this script's own output
set -euo pipefail

mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then
    mode=cpu
    BUDGET_S=${2:?"--cpu needs a budget in seconds, e.g. --cpu 45"}
elif [[ $# -gt 0 ]]; then
    echo "usage: OUT=DIR $0 [--cpu SECONDS]" >&2
    exit 2
fi
: "${OUT:?set OUT to the folder that receives the results}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-python3}
PRESET=${PRESET:-tiny}
SNAPSHOT_S=${SNAPSHOT_S:-60}
GEN_SHARE=${GEN_SHARE:-0.66}
ENC_SHARE=${ENC_SHARE:-0.18}
if [[ $mode == gpu ]]; then
    BUDGET_S=${BUDGET_S:-500}; BATCH=${BATCH:-256}; AMP=${AMP:-1}; LPIPS=${LPIPS:-vgg}
    DEVICE=cuda; CKPT_EVERY=250; SAMPLE_EVERY=1000; LEAD_S=20  # seconds a training run takes to start
    EVAL_ARGS=(); DEMO_ARGS=()
else
    BATCH=${BATCH:-4}; AMP=${AMP:-0}; LPIPS=${LPIPS:-alex}
    DEVICE=cpu; CKPT_EVERY=2; SAMPLE_EVERY=0; LEAD_S=5
    EVAL_ARGS=(--n 12); DEMO_ARGS=(--frames 6 --size 64)
fi
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
GEN=$WORK/generator ENC=$WORK/encoder
START=$(date +%s)
exec > >(tee -a "$OUT/run.log") 2>&1

say() { echo "[$(( $(date +%s) - START )) s] $*"; }
coordgan() { (cd "$ROOT" && PYTHONUNBUFFERED=1 "$PY" -m coordgan.cli "$@"); }
# minutes left until SHARE of the budget has passed, less the seconds a run takes to start (at least 3 s)
minutes_until() { "$PY" -c "import sys, time; b, s, t0, lead = map(float, sys.argv[1:]);
print(max(0.05, (t0 + b * s - time.time() - lead) / 60))" "$BUDGET_S" "$1" "$START" "$2"; }
newest() {  # the newest networks checkpoint of a run folder ('' before its first)
    [[ -f $1/latest.json ]] || return 0
    "$PY" -c "import json, sys; print(sys.argv[1] + '/' + json.load(open(sys.argv[1] + '/latest.json'))['networks'])" "$1"
}
summarize() {  # $WORK/summary.json from what the stages left (written whole)
    "$PY" - "$WORK" "$WORK/summary.json" "$START" "$mode" "$BATCH" <<'EOF'
"""summary.json: where, how long, how much was seen and how fast, and the scores beside the baseline."""
import json, statistics, subprocess, sys, time
from pathlib import Path

work, dest, start, mode, batch = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])


def run_stats(folder):
    rows = []
    for line in (folder / "log.jsonl").read_text().splitlines() if (folder / "log.jsonl").is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written while a snapshot reads
            pass
    if not rows:
        return None
    return {"steps": rows[-1]["step"], "images_seen": rows[-1]["step"] * batch,
            "images_per_s": statistics.median(r["images_per_s"] for r in rows),
            "data_wait_share": round(sum(r["data_time"] for r in rows) / sum(r["time"] for r in rows), 4)}


def read(path):
    return json.loads(path.read_text()) if path.is_file() else None


device = "cpu"
if mode == "gpu":
    try:
        device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        device = "cuda (nvidia-smi unavailable)"
ev, demo = read(work / "eval.json"), read(work / "demo" / "demo.json")
summary = {
    "device": device, "minutes": round((time.time() - start) / 60, 2), "batch": batch,
    "generator": run_stats(work / "generator"), "encoder": run_stats(work / "encoder"),
    "eval_propagation": ev and {"miou": ev["miou"], "identity_miou": ev["identity_miou"],
                                "margin_points": round(100 * (ev["miou"] - ev["identity_miou"]), 2),
                                "match_error_px": ev["match_error_px"],
                                "identity_match_error_px": ev["identity_match_error_px"]},
    "demo": demo and {"J_mean": demo["propagated"]["J_mean"], "identity_J_mean": demo["identity baseline"]["J_mean"],
                      "margin": round(demo["propagated"]["J_mean"] - demo["identity baseline"]["J_mean"], 4)},
}
tmp = dest.with_suffix(".tmp")
tmp.write_text(json.dumps(summary, indent=2) + "\n")
tmp.replace(dest)
EOF
}
put() {  # copy $1 to $OUT/$2, replacing it whole (a copy cut off midway stays a .partial)
    [[ -n $1 && -f $1 ]] || return 0
    cp "$1" "$OUT/$2.partial" && mv -f "$OUT/$2.partial" "$OUT/$2"
}
copy_out() {  # the newest checkpoints, the logs and summary.json into $OUT; never fails the script
    local g e last
    g=$(newest "$GEN") e=$(newest "$ENC")
    put "$e" encoder.safetensors || true
    put "$g" generator.safetensors || true
    put "${g%.safetensors}.state.safetensors" generator.state.safetensors || true
    (cd "$WORK" && find . -maxdepth 2 \( -name train.log -o -name log.jsonl -o -name run.json -o -name 'eval.*' \
        -o -name demo.json -o -name strip.png \) -print0 >files.list
     last=$(ls generator/samples/*.png 2>/dev/null | tail -n 1 || true)
     if [[ -n $last ]]; then printf '%s\0' "$last" >>files.list; fi
     tar -czf logs.tar.gz --null -T files.list 2>/dev/null) || true
    put "$WORK/logs.tar.gz" logs.tar.gz || true
    summarize >/dev/null 2>&1 && put "$WORK/summary.json" summary.json || true
}
command -v flock >/dev/null || flock() { :; }  # (util-linux; without it snapshots may overlap, rarely)
snapshot() {  # one at a time: the minute loop and the stages' ends share the files
    (flock 9 && copy_out) 9>"$WORK/snapshot.lock" || true
}
(while sleep "$SNAPSHOT_S"; do snapshot; done) </dev/null >/dev/null 2>&1 &
SNAPSHOTS=$!
# On exit (also a failed stage): stop the loop (its sleep first, so it cannot start another copy),
# then one last snapshot. `set +e`: a loop already gone must not end the trap early.
trap 'set +e; pkill -P $SNAPSHOTS 2>/dev/null; kill $SNAPSHOTS 2>/dev/null; wait $SNAPSHOTS 2>/dev/null; snapshot' EXIT

say "mode $mode, budget ${BUDGET_S} s, preset $PRESET, batch $BATCH, bf16 $AMP, LPIPS $LPIPS (random backbone), work $WORK"
[[ $mode == gpu ]] && (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true)
amp=(); [[ $AMP == 1 ]] && amp=(--amp)
# StyleGAN2-ADA's R1 heuristic for the resolution and batch, 0.0002 res^2 / batch: what the CPU runs
# used at batch 4 (r1 0.05, checkpoints/README.md), scaled to this batch as `coordgan train` scales
r1=$("$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from coordgan.config import get_preset;
print(f'{0.0002 * get_preset(sys.argv[2]).size ** 2 / int(sys.argv[3]):.6g}')" "$ROOT" "$PRESET" "$BATCH")
common=(--data synthetic-faces --batch "$BATCH" --steps 100000000 --ckpt-every "$CKPT_EVERY"
        --sample-every "$SAMPLE_EVERY" --lpips-net "$LPIPS" --lpips-random-backbone --device "$DEVICE" "${amp[@]}")

say "generator: until ${GEN_SHARE} of the budget, r1 $r1"
# A stage that fails (a NaN stop keeps the last good checkpoint) does not end the call: what
# follows goes on with the newest checkpoint there is, and summary.json says what was reached.
coordgan train --preset "$PRESET" --out "$GEN" --loss "r1=$r1" --max-minutes "$(minutes_until "$GEN_SHARE" "$LEAD_S")" \
    "${common[@]}" || say "the generator run ended with exit $?; going on with its newest checkpoint"
snapshot
gen_ckpt=$(newest "$GEN")
[[ -n $gen_ckpt ]] || { say "no generator checkpoint was written: stopping"; exit 1; }
enc_until=$("$PY" -c "print($GEN_SHARE + $ENC_SHARE)")
say "encoder against $gen_ckpt: until $enc_until of the budget"
coordgan train-encoder --gen-ckpt "$gen_ckpt" --out "$ENC" --max-minutes "$(minutes_until "$enc_until" "$LEAD_S")" \
    "${common[@]}" || say "the encoder run ended with exit $?; going on with its newest checkpoint"
snapshot
enc_ckpt=$(newest "$ENC")
[[ -n $enc_ckpt ]] || { say "no encoder checkpoint was written: stopping"; exit 1; }

say "eval-propagation"
coordgan eval-propagation "$enc_ckpt" --data synthetic-faces --device "$DEVICE" --json "$WORK/eval.json" \
    --vis "$WORK/eval.png" "${EVAL_ARGS[@]}" || say "eval-propagation failed (exit $?)"
if (cd "$ROOT" && "$PY" -c "import av, onnxruntime, onnxscript" 2>/dev/null); then
    say "demo (ONNX Runtime, CPU)"
    coordgan demo --ckpt "$enc_ckpt" --out "$WORK/demo" "${DEMO_ARGS[@]}" || say "the demo failed (exit $?)"
else
    say "demo skipped: PyAV, onnxruntime or onnxscript is missing here (carry their wheels)"
fi

snapshot
cat "$OUT/summary.json"
say "done: $OUT"
