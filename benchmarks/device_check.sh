#!/usr/bin/env bash
# One prepared device check of the search's throughput (see benchmarks/README.md).
#
#   benchmarks/device_check.sh            # a GPU when there is one (FFHQ-1024 shapes, < 5 min on an H200),
#                                         # else the tiny CPU smoke run
#   benchmarks/device_check.sh --tiny     # the tiny run (32 px toy network) on whatever device there is
#   benchmarks/device_check.sh --stylegan2 --batches 1,8,32,64   # StyleGAN2 at the FFHQ-1024 config
#                                         # (fp32/TF32/bf16; with --tiny: a 32 px StyleGAN2)
#
# Results: $OUT/device_check.json and $OUT/device_check.log ($OUT defaults to ./device_check_out).
# Extra arguments go to benchmarks/device_check.py (e.g. --compile, --batches 1,8).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/device_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
if [ -x "$REPO/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY="$REPO/.venv/bin/python"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "# device_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/device_check.log"

ARGS=("$@")
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  case " ${ARGS[*]:-} " in *" --tiny "*) ;; *) echo "no CUDA device: running the tiny CPU configuration"; ARGS+=(--tiny) ;; esac
fi
# the whole check stays under 5 minutes; a run that hangs is cut off at 290 s
timeout 290 "$PY" benchmarks/device_check.py --json "$OUT/device_check.json" "${ARGS[@]}" 2>&1 | tee -a "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
