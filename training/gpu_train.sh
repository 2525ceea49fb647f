#!/usr/bin/env bash
# Train the bundled generator on a CUDA machine (e.g. a lent GPU) for a fixed time; results in $OUT.
#
#   OUT=... MINUTES=7 training/gpu_train.sh [more `pulse-ray train` options]
#
# Needs the packed faces (training/pack_faces.py pack RUN/faces64.npz .device/faces64.parquet, ~31 MB),
# since ../shared does not travel. Trains from scratch with training/gpu_schedule.json (CONFIG= to change),
# or continues a state file when RESUME_FROM=path/state.pt. Writes to $OUT: generator.pt (the EMA
# generator at the highest fully grown resolution), samples.png, gpu_train.log and the full training
# state split into 15 MiB parts (join: cat state.pt.part-* > state.pt).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/gpu_out}"
RUN="${RUN:-$REPO/runs/gpu}"
PACKED="${PACKED:-$REPO/.device/faces64.parquet}"
CONFIG="${CONFIG:-$REPO/training/gpu_schedule.json}"
MINUTES="${MINUTES:-7}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUN"
LOG="$OUT/gpu_train.log"
{
  echo "# gpu_train $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), $MINUTES min, config $CONFIG"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$LOG"
[ -f "$RUN/faces64.npz" ] || "$PY" training/pack_faces.py unpack "$PACKED" "$RUN/faces64.npz" 2>&1 | tee -a "$LOG"
RESUME=()
if [ -n "${RESUME_FROM:-}" ]; then cp "$RESUME_FROM" "$RUN/state.pt"; RESUME=(--resume); fi
"$PY" -m pulse_ray.train.loop --run-dir "$RUN" --config "$CONFIG" --minutes "$MINUTES" \
  --save-every 2 --sample-every 1 --export "$OUT/generator.pt" "${RESUME[@]}" "$@" 2>&1 | tee -a "$LOG"
cp "$RUN/samples.png" "$OUT/samples.png"
split -b 15m "$RUN/state.pt" "$OUT/state.pt.part-"
ls -l "$OUT" | tee -a "$LOG"
