#!/usr/bin/env bash
# The GPU side of the speed and repeatability issues, on a machine with one or two GPUs:
#   OUT=/tmp/v bash benchmarks/gpu_verify.sh                       # every step
#   OUT=/tmp/v STEPS="tests inprocess" bash benchmarks/gpu_verify.sh
# tests:     pytest -m gpu (graph timing and its fallback, memory attribution, ceilings, a pooled sweep)
# inprocess: benchmarks/inprocess.py on the 120 bf16 head-128 cells of +sweep=full, the sweep on 1 and 2 GPUs
# agreement: benchmarks/agreement.py on those cells, one GPU: new twice (run-to-run), the old protocol,
#            and the new one without prewarmed processes
# full:      +sweep=full (480 cells) on every GPU, with its report
# disturb:   docs/h200x2/probe_disturb.py --long: do another process's start phases move long timed calls?
# start:     docs/h200x2/probe_start.py: a cell process's start, step by step, 1, 2 and 4 at once
# drivercalls: docs/h200x2/probe_driver_calls.py: a measuring cell's own driver calls while others start
# reuse:     one process per device (run.cells_per_process=0): inprocess.py on 1 and 2 GPUs with both
#            settings, agreement.py run to run, and the steps of a reused process (probe_reuse.py)
# sets:      measure.input_sets=8 (the default) against 1, one process per device: agreement.py with the two
#            interleaved, three runs each, on each GPU at once (run to run stays on one GPU)
# sets_fresh: the same with a fresh process per cell: even GPUs 8,1,8 input sets and odd ones 1,8,1
# scale:     inprocess.py with the sweep on 1, 2 and every GPU (GPUS=1,2,4), both run.cells_per_process settings
# Logs land in $OUT; datasets and run folders in $OUT/results.tgz.
set -uo pipefail
OUT=${OUT:-outputs/gpu_verify}
STEPS=" ${STEPS:-imports tests inprocess agreement full} "
mkdir -p "$OUT/work"
want() { [[ "$STEPS" == *" $1 "* ]]; }
step() { echo; echo "=== $(date +%T) $*"; }
FULL120=(+sweep=full "grid.dtypes=[bfloat16]" "grid.head_dims=[128]")
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
if want imports; then
  step "what the fork server imports (cumulative seconds, the largest)"
  python -X importtime -c "import tasks.preload" 2>&1 | sort -t'|' -k2 -n | tail -12 | tee "$OUT/imports.txt"
  python -c "import time; t=time.time(); import torch; a=time.time(); import tasks.preload; print(f'torch {a-t:.2f} s, preload {time.time()-a:.2f} s')" | tee -a "$OUT/imports.txt"
fi
if want tests; then
  step "pytest -m gpu"
  timeout 420 python -m pytest -m gpu tests/ -q -p no:cacheprovider -rs > "$OUT/gpu_tests.txt" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.txt"
fi
if want inprocess; then
  step "inprocess: the sweep against a do_bench loop"
  timeout 480 python benchmarks/inprocess.py --gpus 1,2 --keep "$OUT/work/inprocess" 2>&1 | tee "$OUT/inprocess.txt"
fi
if want agreement; then
  step "agreement: new, new, old, no prewarm on one GPU"
  timeout 560 python benchmarks/agreement.py --runs new:1,new:1,old:1,noprewarm:1 --keep "$OUT/work/agreement" \
    "${FULL120[@]}" 2>&1 \
    | grep -v "^\[" | tee "$OUT/agreement.txt"
fi
if want disturb; then
  step "disturb: long cells timed while other processes start, phase by phase"
  CUDA_VISIBLE_DEVICES=0 timeout 240 python docs/h200x2/probe_disturb.py --long 2>&1 | grep -v -e Deprecation -e "os.fork()" \
    | tee "$OUT/probe_disturb_long.txt"
fi
if want start; then
  step "start: a cell process's start, step by step"
  CUDA_VISIBLE_DEVICES=0 timeout 120 python docs/h200x2/probe_start.py 2>&1 | grep -v -e Deprecation -e "os.fork()" \
    | tee "$OUT/probe_start.txt"
fi
if want drivercalls; then
  step "drivercalls: a measuring cell's driver calls while other processes start"
  CUDA_VISIBLE_DEVICES=0 timeout 120 python docs/h200x2/probe_driver_calls.py 2>&1 | grep -v -e Deprecation -e "os.fork()" \
    | tee "$OUT/probe_driver_calls.txt"
fi
if want reuse; then
  step "reuse: one process per device against a fresh process per cell"
  timeout 560 python benchmarks/inprocess.py --gpus 1,2 --cells-per-process 0,1 --keep "$OUT/work/inprocess_reuse" 2>&1 \
    | tee "$OUT/inprocess_reuse.txt"
  timeout 300 python benchmarks/agreement.py --runs reuse:1,reuse:1 --keep "$OUT/work/agreement_reuse" \
    "${FULL120[@]}" 2>&1 | grep -v "^\[" | tee "$OUT/agreement_reuse.txt"
  LOG="$OUT/probe_reuse_steps.log" CUDA_VISIBLE_DEVICES=0 timeout 200 python docs/h200x2/probe_reuse.py 2>&1 \
    | grep -v -e Deprecation -e "os.fork()" | tee "$OUT/probe_reuse.txt"
fi
# agreement.py on each GPU at once, one sweep after another: per_gpu NAME RUNS_EVEN_GPUS RUNS_ODD_GPUS
per_gpu() {
  local g runs
  for g in $(nvidia-smi --query-gpu=index --format=csv,noheader); do
    if (( g % 2 == 0 )); then runs=$2; else runs=$3; fi
    CUDA_VISIBLE_DEVICES=$g timeout 560 python benchmarks/agreement.py --keep "$OUT/work/$1_gpu$g" \
      --runs "$runs" "${FULL120[@]}" 2>&1 | grep -v "^\[" > "$OUT/$1_gpu$g.txt" &
  done
  wait
  grep -h -e "cells in" -e "run to run" "$OUT"/$1_gpu*.txt
}
if want sets; then
  step "sets: input_sets 8 (the default) against 1, one process per device, interleaved, on each GPU at once"
  per_gpu sets sets1:1,sets8:1,sets1:1,sets8:1,sets1:1,sets8:1 sets8:1,sets1:1,sets8:1,sets1:1,sets8:1,sets1:1
fi
if want sets_fresh; then
  step "sets_fresh: input_sets 8 against 1, a fresh process per cell, on each GPU at once"
  per_gpu sets_fresh fresh:1,fresh_sets1:1,fresh:1 fresh_sets1:1,fresh:1,fresh_sets1:1
fi
if want scale; then
  step "scale: the sweep on ${GPUS:=1,2,4} GPUs, a fresh process per cell and one process per device"
  timeout 590 python benchmarks/inprocess.py --gpus "$GPUS" --cells-per-process 0,1 --keep "$OUT/work/scale" 2>&1 \
    | tee "$OUT/scale.txt"
fi
if want full; then
  step "+sweep=full on every GPU"
  timeout 400 python -m orchestrator +sweep=full store.path="$OUT/work/full" hydra.run.dir="$OUT/work/full_run" \
    run.progress=false 2>&1 | tail -60 | tee "$OUT/full.txt"
fi
tar czf "$OUT/results.tgz" -C "$OUT/work" . 2>/dev/null
ls -la "$OUT"
