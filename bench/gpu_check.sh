#!/usr/bin/env bash
# One command for a lent GPU (under 10 minutes, about 5 when nothing hangs): versions, the CUDA
# tests, engine speed at the Llama-3-8B shape, and the CUDA-path probes of bench/gpu_probe.py. Everything goes to $OUT
# (gpu_check.log holds it all, one <stage>.log per stage, summary.txt the stage results).
# Each stage has its own time limit; a failed stage is logged and the next one runs.
#
#   OUT=/tmp/out bash bench/gpu_check.sh            # on the GPU machine (python3 with torch)
#   OUT=/tmp/out bash bench/gpu_check.sh --dry-run  # tiny shape on the CPU, under a minute
#
# PYTHON picks the interpreter (default python3); no network, no virtual environment needed.
# STAGES=env,tests,... runs only those stages; PROBE_STAGES picks the probe stage's own (on a GPU).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY_RUN=${DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT:$ROOT/service:$ROOT/integrations${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log
: > "$LOG"
: > "$OUT/summary.txt"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  [ -n "${STAGES:-}" ] && [[ ",$STAGES," != *",$name,"* ]] && return
  start=$(date +%s)
  echo "== $name: $* ==" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  cat "$OUT/$name.log" >> "$LOG"
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$LOG" "$OUT/summary.txt"
}

if [ "$DRY_RUN" = 1 ]; then
  SHAPE=tiny; DEVICE=cpu; DTYPE=float32; QUICK=--quick
  BENCH=(--new-tokens 9 --prompt-tokens 8 --write-tokens 32 --repeats 1 --batches 1,2)
  LIMITS=(300 300 300 0)  # generous: a shared CPU can be slow; the stages take about 35 s of CPU
else
  SHAPE=llama3-8b; DEVICE=cuda; DTYPE=bfloat16; QUICK=
  BENCH=(--batches 1,8)
  LIMITS=(120 110 150 35)  # with env (20 s) and compiled (150 s): under 10 minutes in all
fi

{ date -u; uname -a; command -v nvidia-smi > /dev/null && nvidia-smi; } > "$OUT/machine.log" 2>&1
cat "$OUT/machine.log" >> "$LOG"
# The modules holding GPU tests, named: collecting the others would import what this machine may lack.
GPU_TESTS=(tests/core/test_cuda.py tests/core/test_half_precision.py tests/core/test_mplus_reference.py)
PROBE=("$PY" bench/gpu_probe.py --shape "$SHAPE" --device "$DEVICE" --dtype "$DTYPE" $QUICK)
if [ "$DRY_RUN" = 1 ]; then  # one process: a CPU cannot lose its context to a failed kernel
  stage probe "${LIMITS[2]}" "${PROBE[@]}" --stages env,graphs,caches,prefill,profile,memories,agreement
  stage tests "${LIMITS[0]}" "$PY" -m pytest -q -m gpu "${GPU_TESTS[@]}" -p no:cacheprovider
else  # separate processes: a CUDA error poisons the rest of its process
  stage env 20 "${PROBE[@]}" --stages env
  stage tests "${LIMITS[0]}" "$PY" -m pytest -q -m gpu "${GPU_TESTS[@]}" -p no:cacheprovider
fi
stage engine_bench "${LIMITS[1]}" "$PY" bench/engine_bench.py --shape "$SHAPE" --device "$DEVICE" --dtype "$DTYPE" "${BENCH[@]}"
if [ "$DRY_RUN" != 1 ]; then
  stage probe "${LIMITS[2]}" "${PROBE[@]}" --stages "${PROBE_STAGES:-graphs,caches,prefill,profile,memories}"
  stage agreement "${LIMITS[3]}" "${PROBE[@]}" --stages agreement
  stage compiled 150 "${PROBE[@]}" --stages compiled  # an experiment, last: compiling may take long
fi
echo "results in $OUT" | tee -a "$LOG"
