#!/usr/bin/env bash
# One device call makes the tiny checkpoint. Several training configurations run side by side, in
# processes of their own that share the GPU (one 32 px run leaves an H200 mostly idle: ~87 ms of GPU
# work against ~170 ms of host time a step). Each trains the generator for most of the budget, then
# the encoder, and is scored (eval-propagation, demo); the best two by eval-propagation come back.
# The newest checkpoints and logs are copied into $OUT every minute or so, so that a call cut off at
# its limit still returns checkpoints that load.
#
#   OUT=DIR checkpoints/train_on_gpu.sh             GPU: 4 configurations, a 500 s budget (one 9-minute call)
#   OUT=DIR checkpoints/train_on_gpu.sh --cpu 45    CPU mode: 2 configurations, a budget of seconds (the suite runs it)
#
# CONFIGS (environment): space-separated NAME:SEED:GENERATOR_LOSSES:ENCODER_LOSSES, the losses as
# comma-separated NAME=VALUE for `--loss` (the generator's r1 is ADA's heuristic unless given).
#   GPU default: base:0:: seed1:1:: chamfer100:0:chamfer=100: chamfer100-rec:1:chamfer=100:enc_con=1
#   CPU default: base:0:: chamfer100:1:chamfer=100:
# Each configuration gets an equal share of the CPUs (taskset) and as many threads.
# Other overrides: PRESET (tiny), BATCH (GPU 256), AMP (GPU 1: bf16 autocast), LPIPS (GPU vgg),
# BUDGET_S, GEN_SHARE / ENC_SHARE (of the budget; 0.66 / 0.18), SNAPSHOT_S (60), WORK (scratch
# folder), PY (python3). Run from anywhere; it works in the repository it lives in.
#
# What comes back in $OUT (at most 8 files, each replaced whole):
#   until scored:  cfg-NAME.safetensors        each configuration's newest encoder (g_ema + encoder), or
#                                              its newest generator before it has one
#   once scored:   encoder.safetensors         the best configuration by eval-propagation: the file to ship
#                  encoder-2.safetensors       the runner-up
#                  generator.safetensors       the best one's newest generator (g, g_ema, d, d_patch)
#                  generator.state.safetensors and its optimizer and loader state (`train --resume` goes on)
#   always:        logs.tar.gz                 per configuration: train.log, log.jsonl and run.json of both
#                                              runs, stages.log, the last sample grid, eval.json / eval.png,
#                                              demo.json / strip.png
#                  summary.json                device, minutes, and per configuration its seed, losses,
#                                              steps, images seen, images/s and scores; the ranking
#                  run.log                     this script's own output
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
    CONFIGS=${CONFIGS:-"base:0:: seed1:1:: chamfer100:0:chamfer=100: chamfer100-rec:1:chamfer=100:enc_con=1"}
    DEVICE=cuda; CKPT_EVERY=250; SAMPLE_EVERY=1000; LEAD_S=30  # seconds a run takes to start (4 at once)
    EVAL_ARGS=(); DEMO_ARGS=()
else
    BATCH=${BATCH:-4}; AMP=${AMP:-0}; LPIPS=${LPIPS:-alex}
    CONFIGS=${CONFIGS:-"base:0:: chamfer100:1:chamfer=100:"}
    DEVICE=cpu; CKPT_EVERY=2; SAMPLE_EVERY=0; LEAD_S=5
    EVAL_ARGS=(--n 12); DEMO_ARGS=(--frames 6 --size 64)
fi
read -r -a configs <<<"$CONFIGS"
names=()
for c in "${configs[@]}"; do
    IFS=: read -r name seed _ <<<"$c"
    [[ $name =~ ^[A-Za-z0-9_-]+$ && $seed =~ ^[0-9]+$ && $(tr -cd : <<<"$c") == ::: ]] || {
        echo "CONFIGS: '$c' is not NAME:SEED:GENERATOR_LOSSES:ENCODER_LOSSES (NAME of letters, digits, _ and -)" >&2
        exit 2; }
    [[ " ${names[*]} " != *" $name "* ]] || { echo "CONFIGS: the name $name is given twice" >&2; exit 2; }
    names+=("$name")
done
(( ${#names[@]} >= 1 && ${#names[@]} <= 4 )) || { echo "CONFIGS: give 1 to 4 configurations" >&2; exit 2; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
exec > >(tee -a "$OUT/run.log") 2>&1
exec 3>&1  # run.log, for the configurations' own lines (their stages write to their stages.log)

say() { echo "[$(( $(date +%s) - START )) s] $*"; }
note() { say "$@" >&3; }  # from a configuration
coordgan() { (cd "$ROOT" && PYTHONUNBUFFERED=1 "$PY" -m coordgan.cli "$@"); }
# minutes left until SHARE of the budget has passed, less the seconds a run takes to start (at least 3 s)
minutes_until() { "$PY" -c "import sys, time; b, s, t0, lead = map(float, sys.argv[1:]);
print(max(0.05, (t0 + b * s - time.time() - lead) / 60))" "$BUDGET_S" "$1" "$START" "$2"; }
newest() {  # the newest networks checkpoint of a run folder ('' before its first)
    [[ -f $1/latest.json ]] || return 0
    "$PY" -c "import json, sys; print(sys.argv[1] + '/' + json.load(open(sys.argv[1] + '/latest.json'))['networks'])" "$1"
}
summarize() {  # $WORK/summary.json from what the stages left, and the ranking once every score is in (written whole)
    "$PY" - "$WORK" "$START" "$mode" "$BATCH" "$CONFIGS" <<'EOF'
"""summary.json: where, how long, and per configuration how much was seen, how fast and the scores
beside the baseline; ranking.json (best first, by eval-propagation's margin) once scoring ended."""
import json, statistics, subprocess, sys, time
from pathlib import Path

work, start, mode, batch = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
configs = [c.split(":") for c in sys.argv[5].split()]
BARS = {"eval_margin_points": 5.0, "demo_margin": 0.10}  # checkpoints/README.md: what ships


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
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def scores(folder):
    ev, demo = read(folder / "eval.json"), read(folder / "demo" / "demo.json")
    out = {"eval_propagation": ev and {"miou": ev["miou"], "identity_miou": ev["identity_miou"],
                                       "margin_points": round(100 * (ev["miou"] - ev["identity_miou"]), 2),
                                       "match_error_px": ev["match_error_px"],
                                       "identity_match_error_px": ev["identity_match_error_px"]},
           "demo": demo and {"J_mean": demo["propagated"]["J_mean"],
                             "identity_J_mean": demo["identity baseline"]["J_mean"],
                             "margin": round(demo["propagated"]["J_mean"] - demo["identity baseline"]["J_mean"], 4)}}
    out["meets_bars"] = bool(out["eval_propagation"] and out["demo"]
                             and out["eval_propagation"]["margin_points"] >= BARS["eval_margin_points"]
                             and out["demo"]["margin"] >= BARS["demo_margin"])
    return out


device = "cpu"
if mode == "gpu":
    try:
        device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        device = "cuda (nvidia-smi unavailable)"
runs = {}
for name, seed, gen_losses, enc_losses in configs:
    folder = work / name
    runs[name] = {"seed": int(seed), "generator_losses": gen_losses, "encoder_losses": enc_losses,
                  "generator": run_stats(folder / "generator"), "encoder": run_stats(folder / "encoder"),
                  **scores(folder), "scored": (folder / "scored").is_file()}
summary = {"device": device, "minutes": round((time.time() - start) / 60, 2), "batch": batch, "bars": BARS,
           "configurations": runs, "ranking": None}
if all(r["scored"] for r in runs.values()):
    ranked = [n for n in runs if runs[n]["eval_propagation"]]
    summary["ranking"] = sorted(ranked, key=lambda n: (-runs[n]["eval_propagation"]["margin_points"],
                                                       runs[n]["eval_propagation"]["match_error_px"]))
for name, data in (("summary.json", summary), ("ranking.json", summary["ranking"])):
    if data is not None:
        tmp = work / f"{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(work / name)
EOF
}
put() {  # copy $1 to $OUT/$2, replacing it whole (a copy cut off midway stays a .partial)
    [[ -n $1 && -f $1 ]] || return 0
    cp "$1" "$OUT/$2.partial" && mv -f "$OUT/$2.partial" "$OUT/$2"
}
copy_out() {  # checkpoints (per configuration, or the best two once ranked), the logs and summary.json into $OUT
    local name g e best second
    summarize >/dev/null 2>&1 || true
    if [[ -f $WORK/ranking.json ]]; then
        read -r best second < <("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(*(r + ['', ''])[:2])" \
            "$WORK/ranking.json") || true
    fi
    if [[ -n ${best:-} ]]; then  # in an order that never holds more than 8 files, a .partial included
        for name in "${names[@]}"; do
            [[ $name == "$best" || $name == "${second:-}" ]] || rm -f "$OUT/cfg-$name.safetensors"
        done
        put "$(newest "$WORK/$best/encoder")" encoder.safetensors || true
        [[ -z ${second:-} ]] || put "$(newest "$WORK/$second/encoder")" encoder-2.safetensors || true
        rm -f "$OUT"/cfg-*.safetensors
        g=$(newest "$WORK/$best/generator")
        put "$g" generator.safetensors || true
        put "${g%.safetensors}.state.safetensors" generator.state.safetensors || true
    else
        for name in "${names[@]}"; do
            e=$(newest "$WORK/$name/encoder")
            [[ -n $e ]] || e=$(newest "$WORK/$name/generator")
            put "$e" "cfg-$name.safetensors" || true
        done
    fi
    (cd "$WORK" && find . -maxdepth 3 \( -name train.log -o -name log.jsonl -o -name run.json -o -name 'eval.*' \
        -o -name demo.json -o -name strip.png -o -name stages.log \) -print0 >files.list
     for name in "${names[@]}"; do
         last=$(ls "$name"/generator/samples/*.png 2>/dev/null | tail -n 1 || true)
         if [[ -n $last ]]; then printf '%s\0' "$last" >>files.list; fi
     done
     tar -czf logs.tar.gz --null -T files.list 2>/dev/null) || true
    put "$WORK/logs.tar.gz" logs.tar.gz || true
    put "$WORK/summary.json" summary.json || true
    rm -f "$OUT"/*.partial  # (one a killed snapshot left)
}
command -v flock >/dev/null || flock() { :; }  # (util-linux; without it snapshots may overlap, rarely)
snapshot() {  # one at a time: the minute loop and the end share the files
    (flock 9 && copy_out) 9>"$WORK/snapshot.lock" || true
}
(while sleep "$SNAPSHOT_S"; do snapshot; done) </dev/null >/dev/null 2>&1 &
SNAPSHOTS=$!
# On exit (also a failed stage): take the lock (a snapshot under way finishes its copies first),
# stop the loop (its sleep first, so it cannot start another), then one last snapshot under the
# lock. `set +e`: a loop already gone must not end the trap early.
trap 'set +e; exec 9>"$WORK/snapshot.lock"; flock 9; pkill -P $SNAPSHOTS 2>/dev/null; kill $SNAPSHOTS 2>/dev/null
      wait $SNAPSHOTS 2>/dev/null; copy_out' EXIT

say "mode $mode, budget ${BUDGET_S} s, preset $PRESET, batch $BATCH, bf16 $AMP, LPIPS $LPIPS (random backbone), work $WORK"
say "configurations (NAME:SEED:GENERATOR_LOSSES:ENCODER_LOSSES): ${configs[*]}"
[[ $mode == gpu ]] && (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true)
amp=(); [[ $AMP == 1 ]] && amp=(--amp)
# StyleGAN2-ADA's R1 heuristic for the resolution and batch, 0.0002 res^2 / batch: what the CPU runs
# used at batch 4 (r1 0.05, checkpoints/README.md), scaled to this batch as `coordgan train` scales
r1=$("$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from coordgan.config import get_preset;
print(f'{0.0002 * get_preset(sys.argv[2]).size ** 2 / int(sys.argv[3]):.6g}')" "$ROOT" "$PRESET" "$BATCH")
say "generators: until ${GEN_SHARE} of the budget, r1 $r1 unless a configuration sets it"
mapfile -t allowed < <("$PY" -c "import os; print(*sorted(os.sched_getaffinity(0)), sep='\n')")  # (any ids)
cpus=${#allowed[@]}
share=$(( cpus / ${#names[@]} )); (( share >= 1 )) || share=1
enc_until=$("$PY" -c "print(round($GEN_SHARE + $ENC_SHARE, 6))")

losses() {  # --loss NAME=VALUE for each of a comma-separated list
    local item
    for item in ${1//,/ }; do printf '%s\0%s\0' --loss "$item"; done
}

train_one() {  # NAME SEED GENERATOR_LOSSES ENCODER_LOSSES: generator, encoder, scores; its output in stages.log
    local name=$1 seed=$2 dir=$WORK/$1 gen_ckpt enc_ckpt
    local -a gen_losses enc_losses common
    mapfile -d '' gen_losses < <(losses "r1=$r1,$3")  # (a later r1= in $3 overrides the heuristic)
    mapfile -d '' enc_losses < <(losses "$4")
    common=(--data synthetic-faces --batch "$BATCH" --steps 100000000 --ckpt-every "$CKPT_EVERY" --seed "$seed"
            --sample-every "$SAMPLE_EVERY" --lpips-net "$LPIPS" --lpips-random-backbone --device "$DEVICE" "${amp[@]}")
    # A stage that fails (a NaN stop keeps the last good checkpoint) does not end the configuration:
    # what follows goes on with the newest checkpoint there is, and summary.json says what was reached.
    coordgan train --preset "$PRESET" --out "$dir/generator" "${gen_losses[@]}" \
        --max-minutes "$(minutes_until "$GEN_SHARE" "$LEAD_S")" "${common[@]}" \
        || note "$name: the generator run ended with exit $?; going on with its newest checkpoint"
    gen_ckpt=$(newest "$dir/generator")
    [[ -n $gen_ckpt ]] || { note "$name: no generator checkpoint was written: stopping it"; return 1; }
    note "$name: encoder against ${gen_ckpt#"$WORK"/}: until $enc_until of the budget"
    coordgan train-encoder --gen-ckpt "$gen_ckpt" --out "$dir/encoder" "${enc_losses[@]}" \
        --max-minutes "$(minutes_until "$enc_until" "$LEAD_S")" "${common[@]}" \
        || note "$name: the encoder run ended with exit $?; going on with its newest checkpoint"
    enc_ckpt=$(newest "$dir/encoder")
    [[ -n $enc_ckpt ]] || { note "$name: no encoder checkpoint was written: stopping it"; return 1; }
    note "$name: eval-propagation"
    coordgan eval-propagation "$enc_ckpt" --data synthetic-faces --device "$DEVICE" --json "$dir/eval.json" \
        --vis "$dir/eval.png" "${EVAL_ARGS[@]}" || note "$name: eval-propagation failed (exit $?)"
    if (cd "$ROOT" && "$PY" -c "import av, onnxruntime, onnxscript" 2>/dev/null); then
        note "$name: demo (ONNX Runtime, CPU)"
        coordgan demo --ckpt "$enc_ckpt" --out "$dir/demo" "${DEMO_ARGS[@]}" || note "$name: the demo failed (exit $?)"
    else
        note "$name: demo skipped: PyAV, onnxruntime or onnxscript is missing here (carry their wheels)"
    fi
}

pids=()
for i in "${!configs[@]}"; do
    IFS=: read -r name seed gen enc <<<"${configs[$i]}"
    mkdir -p "$WORK/$name"
    first=$(( (i * share) % cpus ))
    pin=$(IFS=,; echo "${allowed[*]:$first:$share}")
    say "$name: seed $seed, generator losses '${gen:-preset}', encoder losses '${enc:-preset}', CPUs $pin"
    command -v taskset >/dev/null || pin=""
    # (a configuration that stops early is marked scored too: the ranking need not wait for it)
    ( trap 'touch "$WORK/$name/scored"' EXIT
      export OMP_NUM_THREADS=$share MKL_NUM_THREADS=$share
      [[ -z $pin ]] || taskset -pc "$pin" $BASHPID >/dev/null 2>&1 || true  # its children inherit the CPUs
      train_one "$name" "$seed" "$gen" "$enc" ) >"$WORK/$name/stages.log" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || say "${names[$i]}: stopped early (exit $?; its stages.log in logs.tar.gz)"
done

snapshot
"$PY" - "$WORK/summary.json" <<'EOF' || true
import json, sys
s = json.load(open(sys.argv[1]))
for name in s["ranking"] or []:
    r = s["configurations"][name]
    demo = "n/a" if r["demo"] is None else f"{r['demo']['margin']:+.4f}"
    bars = ": meets both bars" if r["meets_bars"] else ""
    print(f"{name}: over the identity baseline, eval-propagation {r['eval_propagation']['margin_points']:+.2f} "
          f"points, demo {demo}{bars}")
print("ranked by eval-propagation:", ", ".join(s["ranking"] or ["none (no configuration was scored)"]))
EOF
cat "$OUT/summary.json" || true
say "done: $OUT"
