#!/usr/bin/env bash
# Issue 6 on a GPU machine (about 6 minutes on one H100): the notebook's encoder grid timed
# right with each row's kernels checked, training (fwd_bwd) and FlexAttention cells, the
# capacity search at head size 64 fp16 for batch 1 and 32, and the GPU tests.
#   OUT=/tmp/issue6 bash benchmarks/gpu_workloads.sh
#   STEPS="2 3 4" OUT=/tmp/issue6 bash benchmarks/gpu_workloads.sh   # some steps only
# Everything lands under $OUT: one dataset per step, Hydra run folders (capacity.md and
# capacity.png in runs/capacity/), and summary.txt.
set -uo pipefail
OUT=${OUT:-outputs/issue6}
STEPS=" ${STEPS:-1 2 3 4 5} summary "
mkdir -p "$OUT"
want() { [[ "$STEPS" == *" $1 "* ]]; }
step() { echo; echo "=== $(date +%T) $*"; }
run() { timeout "$1" python -m orchestrator "${@:2}" run.progress=false; echo "exit $?"; }
# steps 1-3 name the GPU kernels of every cell (torch.profiler; about 7 s more per cell)
GPUK=measure.kernels=gpu

if want 1; then
step "1. the notebook's grid through nn.TransformerEncoder (fast path off, backend pinned)"
run 240 +sweep=seed workload=encoder $GPUK store.path="$OUT/encoder" hydra.run.dir="$OUT/runs/encoder"
fi

if want 2; then
step "2. attention op: forward and training step, every backend and FlexAttention"
run 200 +sweep=seed grid.backends=[eager,math,flash,efficient,cudnn,flex] grid.modes=[fwd,fwd_bwd] $GPUK \
  grid.seq_lens=[4096] grid.batch_sizes=[4] grid.head_dims=[64] grid.num_heads=[16] \
  sweep_name=train store.path="$OUT/train" hydra.run.dir="$OUT/runs/train"
fi

if want 3; then
step "3. the encoder's training step at seq 1024, FlexAttention included"
run 120 +sweep=seed workload=encoder $GPUK grid.backends=[eager,math,flash,efficient,cudnn,flex] \
  grid.modes=[fwd_bwd] grid.seq_lens=[1024] sweep_name=encoder_train \
  store.path="$OUT/encoder_train" hydra.run.dir="$OUT/runs/encoder_train"
fi

if want 4; then
step "4. capacity: longest seq per backend, batch 1 and 32, 16 heads of 64, fp16"
run 400 +sweep=capacity store.path="$OUT/capacity" hydra.run.dir="$OUT/runs/capacity"
fi

if want 5; then
step "5. GPU tests: pinned kernels really run, encoder flash vs math, flex, training memory"
timeout 150 python -m pytest -m gpu tests/test_workloads.py -q -p no:cacheprovider 2>&1 | tail -25
fi

if want summary; then
step "summary"
python - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import sys
import pandas as pd
from orchestrator.store import Store
pd.set_option("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 70)
cols = ["workload", "backend", "mode", "batch_size", "seq_len", "status", "median_ms", "tflops",
        "peak_allocated_bytes", "rel_error", "compile_s", "kernels_match"]
import os
for name in ("encoder", "train", "encoder_train"):
    if not os.path.isdir(f"{sys.argv[1]}/{name}"):
        continue
    df = Store(f"{sys.argv[1]}/{name}").latest()
    print(f"\n## {name}\n" + df.sort_values(["mode", "seq_len", "backend"])[cols].to_string(index=False))
    bad = df[df["kernels_match"] == False]  # noqa: E712
    print("kernels not matching their backend:", "none" if bad.empty else "")
    for _, r in bad.iterrows():
        print(f"  {r.backend} {r['mode']} n{r.seq_len}: {r.kernels}")
    for _, r in df.drop_duplicates("backend").iterrows():
        print(f"  kernels {r.backend:<9} {r['mode']:<7} {str(r.kernels)[:160]}")
if os.path.exists(f"{sys.argv[1]}/runs/capacity/capacity.md"):
    print(open(f"{sys.argv[1]}/runs/capacity/capacity.md").read())
EOF
fi
