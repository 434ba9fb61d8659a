#!/usr/bin/env bash
# Training checks for a machine with one CUDA GPU (never needed by the tests):
#  1. a few hundred steps with bf16 autocast, channels_last and torch.compile, beside the same run on the
#     CPU in eager float32: the two loss curves (metrics.csv) should fall alike;
#  2. a 1-GPU torchrun (NCCL) run killed with SIGKILL mid-run and resumed, beside an uninterrupted run:
#     the last metrics rows should be equal;
#  3. training throughput of CMT-S at 224 (batch 128, bf16 autocast) beside timm's ResNet-50, a plain
#     step for both in one run, and our Trainer's step eager vs channels_last vs compile.
# Usage: bash benchmarks/gpu_train_check.sh [OUTPUT_DIR]   (from the repository root, after `make demo`)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-runs/gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
"$BIN/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run this on a GPU machine")'

# 45 updates per epoch on the digits at batch 32: 6 epochs = 270 steps
common=(--config configs/demo.yaml --epochs 6 --no-progress)
"$BIN/cmtnet" train "${common[@]}" --device cuda --amp bf16 --channels-last --compile --output "$OUT/cuda"
"$BIN/cmtnet" train "${common[@]}" --device cpu --amp none --output "$OUT/cpu"
echo "== train loss per epoch: CUDA bf16 + channels_last + compile | CPU float32 eager"
paste -d'|' <(cut -d, -f1,3 "$OUT/cuda/metrics.csv") <(cut -d, -f3 "$OUT/cpu/metrics.csv")

# KILL_AFTER seconds must fall inside the run (startup included): the run prints whether it did
run=("$BIN/torchrun" --nproc_per_node 1 -m cmtnet train "${common[@]}" --device cuda --epochs 12
     --checkpoint-interval 20)
"${run[@]}" --output "$OUT/whole"
if timeout -s KILL "${KILL_AFTER:-40}" "${run[@]}" --output "$OUT/resumed"; then
  echo "the run finished before the kill: raise KILL_AFTER's margin or --epochs" >&2; exit 1
fi
"${run[@]}" --output "$OUT/resumed" --resume
echo "== last metrics row: uninterrupted | killed and resumed"
tail -n 1 "$OUT/whole/metrics.csv"
tail -n 1 "$OUT/resumed/metrics.csv"

echo "== training throughput at 224, batch 128, bf16 autocast"
"$BIN/python" benchmarks/train_throughput.py --device cuda --amp bf16 --batch-size 128 --warmup 3 --rounds 10 \
  --against resnet50
