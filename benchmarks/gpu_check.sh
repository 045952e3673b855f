#!/usr/bin/env bash
# One-command GPU check of block decoding (issue 15): bash benchmarks/gpu_check.sh OUT [--smoke]
#
# Runs each part of benchmarks/gpu_check.py in its own process under its own time cap (one
# failure or timeout does not hide the others), then merges OUT/<part>.json into
# OUT/summary.json and prints a table. Random weights at Qwen3-VL-4B text shapes, bf16, first
# CUDA device, no network; under 8 minutes in all. --smoke: tiny fp32 model on CPU (test suite).
# PYTHON selects the interpreter (default: python). Exit status 0 when every part passed.
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT [--smoke]}
SMOKE=""
if [ "${2:-}" = "--smoke" ]; then SMOKE="--smoke"; fi
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

# part gpu_cap_seconds smoke_cap_seconds (GPU caps sum to 7 minutes; CPU imports are slow)
run_part() {
    local part=$1 cap=$2
    [ -n "$SMOKE" ] && cap=$3
    echo "[gpu_check $(date +%H:%M:%S)] $part (cap ${cap}s)" >&2
    rm -f "$OUT/$part.json"
    timeout -k 10 "$cap" "$PY" "$HERE/gpu_check.py" "$part" --out "$OUT/$part.json" $SMOKE >"$OUT/$part.log" 2>&1
    echo $? >"$OUT/$part.rc"
}

if [ -n "$SMOKE" ]; then  # timings mean nothing in the smoke run: overlap the slow CPU imports
    run_part latency 120 400 & run_part throughput 210 400 & run_part exactness 90 400 & wait
else  # one at a time: the GPU timings must not overlap
    run_part latency 120 0
    run_part throughput 210 0
    run_part exactness 90 0
fi
"$PY" "$HERE/gpu_check.py" summary "$OUT"
