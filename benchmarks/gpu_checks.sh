#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent GPU machine (see BENCHMARKS.md):
#   the kernel/launcher tests (pytest -m gpu), the lookup benchmark's GPU part, and `coordgan bench`
#   on CUDA for the celeba-128 encoder, generator, lookup and frame -> mask pipeline.
# Usage: OUT=dir bash benchmarks/gpu_checks.sh   (each step has its own time limit; logs land in $OUT)
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 COORDGAN_CACHE=${COORDGAN_CACHE:-/tmp/coordgan-cache}
PY=${PYTHON:-python3}
cg() { "$PY" -c 'import sys; from coordgan.cli import main; sys.argv[0] = "coordgan"; main()' "$@"; }
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? ($(date +%T))"
    tail -n 40 "$OUT/$name.log"
}
export -f cg; export OUT PY
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
"$PY" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'
step tests 170 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/test_lookup_cuda.py tests/test_correspondence.py tests/test_kernel_compile.py
step bench_lookup 120 "$PY" benchmarks/bench_lookup.py --skip-cpu
# Commands within a step run with ';': bench exits 1 when a row fails (the published path may run out
# of memory at batch 64), and the rows after it must still run.
# (torch-compile is left out of the pipeline: the lookup's input checks break its graph, compiling
# for minutes; the encoder row below shows what compile does for the network part)
# the frame -> mask path: published vs torch with the fused and the sparse lookup, fp32 and bf16 (the
# tables are in bench_pipeline.log; $OUT brings back 8 files at most)
step bench_pipeline 150 bash -c 'cg bench pipeline --preset celeba-128 --backends published,torch \
    --batch 1,8,64 --iters 20 --max-time 6 --json "$OUT/bench_pipeline.json"; \
    cg bench pipeline --preset celeba-128 --backends torch --gpu-lookup cuda-sparse --batch 1,8,64 --iters 20 \
    --max-time 6; \
    cg bench pipeline --preset celeba-128 --backends torch --gpu-lookup cuda-sparse --precision bf16 --batch 8,64 \
    --iters 20 --max-time 6'
step bench_models 80 bash -c 'cg bench encoder --preset celeba-128 --backends torch,torch-compile --batch 1,8,32 \
    --iters 20 --max-time 10 --json "$OUT/bench_encoder.json"; \
    cg bench generator --preset celeba-128 --backends torch --batch 1,8 --precision fp32 --iters 20 --max-time 10 \
    --json "$OUT/bench_generator.json"'
