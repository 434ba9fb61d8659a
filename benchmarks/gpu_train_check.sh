#!/usr/bin/env bash
# Training checks for a machine with one CUDA GPU (never needed by the tests):
#  1. a few hundred steps with bf16 autocast, channels_last and torch.compile, beside the same run on the
#     CPU in eager float32: the two loss curves (metrics.csv) should fall alike;
#  2. a 1-GPU torchrun (NCCL) run killed with SIGKILL mid-run and resumed, beside an uninterrupted run:
#     the last metrics rows should be equal;
#  3. training throughput of CMT-S at 224 (batch 128, bf16 autocast) beside timm's ResNet-50, a plain
#     step for both in one run, and our Trainer's step eager vs channels_last vs compile.
# Usage: bash benchmarks/gpu_train_check.sh [OUTPUT_DIR [TRAIN_OPTION ...]]   (paths from the repository root)
# TRAIN_OPTIONs go to every `cmtnet train` run. DRY_RUN=1 runs every step on the CPU at a tiny size (float32,
# no compile, 2-3 epochs, CMT-Ti at 32 px in the throughput step), as the tests do with a tiny --data folder:
#   DRY_RUN=1 bash benchmarks/gpu_train_check.sh runs/gpu-dry-run --data tiny_image_folder --batch-size 4
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-runs/gpu-check}
extra=("${@:2}")
rm -rf "$OUT" && mkdir -p "$OUT"
if [ -n "${DRY_RUN:-}" ]; then
  device=cpu
  fast=(--amp none --channels-last)
  short=(--epochs 2)
  long=(--epochs 3)
  throughput=(--device cpu --amp none --model cmt_ti --img-size 32 --batch-size 2 --variants eager channels-last
              --warmup 1 --rounds 1 --against resnet18)
else
  "$BIN/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run this on a GPU machine")'
  device=cuda
  fast=(--amp bf16 --channels-last --compile)
  short=(--epochs 6)  # 45 updates per epoch on the digits at batch 32: 270 steps
  long=(--epochs 12)
  throughput=(--device cuda --amp bf16 --batch-size 128 --warmup 3 --rounds 10 --against resnet50)
fi

common=(--config configs/demo.yaml --no-progress)
"$BIN/cmtnet" train "${common[@]}" "${short[@]}" --device "$device" "${fast[@]}" --output "$OUT/$device" "${extra[@]}"
"$BIN/cmtnet" train "${common[@]}" "${short[@]}" --device cpu --amp none --output "$OUT/cpu-eager" "${extra[@]}"
echo "== train loss per epoch: $device ${fast[*]} | CPU float32 eager"
paste -d'|' <(cut -d, -f1,3 "$OUT/$device/metrics.csv") <(cut -d, -f3 "$OUT/cpu-eager/metrics.csv")

# the run is killed, launcher and workers, as soon as it has written its first checkpoint
descendants() { local child; for child in $(ps -o pid= --ppid "$1"); do echo "$child"; descendants "$child"; done; }
run=("$BIN/torchrun" --nproc_per_node 1 -m cmtnet train "${common[@]}" "${long[@]}" --device "$device"
     --checkpoint-interval 20)
"${run[@]}" --output "$OUT/whole" "${extra[@]}"
"${run[@]}" --output "$OUT/resumed" "${extra[@]}" > "$OUT/killed.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2> /dev/null && [ ! -f "$OUT/resumed/last.pth" ]; do sleep 0.05; done
workers=$(descendants "$pid")  # torchrun starts its workers in sessions of their own
if ! kill -KILL "$pid" $workers 2> /dev/null; then
  echo "the run ended before its first checkpoint: see $OUT/killed.log" >&2; exit 1
fi
wait "$pid" || true
for worker in $workers; do while kill -0 "$worker" 2> /dev/null; do sleep 0.05; done; done
if [ -f "$OUT/resumed/model.safetensors" ]; then
  echo "the run finished before the kill: raise --epochs" >&2; exit 1
fi
"${run[@]}" --output "$OUT/resumed" --resume "${extra[@]}"
echo "== last metrics row: uninterrupted | killed and resumed"
tail -n 1 "$OUT/whole/metrics.csv"
tail -n 1 "$OUT/resumed/metrics.csv"

echo "== training throughput: ${throughput[*]}"
"$BIN/python" benchmarks/train_throughput.py "${throughput[@]}"
