#!/usr/bin/env bash
# Train the bundled generator on a CUDA machine (e.g. a lent GPU) for a fixed time; results in $OUT.
#
#   OUT=... MINUTES=7 scripts/training/gpu_train.sh [more `pulse-ray train` options]
#
# Needs the packed faces (scripts/training/pack_for_device.py pack-faces RUN/faces64.npz .device/faces64.parquet,
# ~23 MB), since ../shared does not travel. Trains from scratch with scripts/training/gpu_schedule.json (CONFIG= to
# change), or continues a state when RESUME_FROM=path (a state.pt, or a packed one: *.packed.pt). Writes to
# $OUT: generator.pt (the EMA generator at the highest fully grown resolution), samples.png, gpu_train.log
# and the training state, packed (pack_for_device.py) and split into 15 MiB parts:
#   cat state.packed.pt.part-* > state.packed.pt && python scripts/training/pack_for_device.py unpack-state state.packed.pt state.pt
# The state is packed and sent back even when training or the export fails part way.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/gpu_out}"
RUN="${RUN:-$REPO/runs/gpu}"
PACKED="${PACKED:-$REPO/.device/faces64.parquet}"
FACES="${FACES:-faces64.npz}"  # the cache name the config's framing reads (faces64_ffhq0.6.npz for colour64.json)
CONFIG="${CONFIG:-$REPO/scripts/training/gpu_schedule.json}"
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
[ -f "$RUN/$FACES" ] || "$PY" scripts/training/pack_for_device.py unpack-faces "$PACKED" "$RUN/$FACES" 2>&1 | tee -a "$LOG"
RESUME=()
if [ -n "${RESUME_FROM:-}" ]; then
  case "$RESUME_FROM" in
    *.packed.pt) "$PY" scripts/training/pack_for_device.py unpack-state "$RESUME_FROM" "$RUN/state.pt" 2>&1 | tee -a "$LOG" ;;
    *) cp "$RESUME_FROM" "$RUN/state.pt" ;;
  esac
  RESUME=(--resume)
fi
set +e
"$PY" -m pulse_ray.train.loop --run-dir "$RUN" --config "$CONFIG" --minutes "$MINUTES" \
  --save-every 2 --sample-every 1 --export "$OUT/generator.pt" "${RESUME[@]}" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
[ -f "$RUN/samples.png" ] && cp "$RUN/samples.png" "$OUT/samples.png"
if [ -f "$RUN/state.pt" ]; then
  "$PY" scripts/training/pack_for_device.py pack-state "$RUN/state.pt" "$RUN/state.packed.pt" 2>&1 | tee -a "$LOG"
  split -b 15m "$RUN/state.packed.pt" "$OUT/state.packed.pt.part-"
fi
ls -l "$OUT" | tee -a "$LOG"
exit "$rc"
