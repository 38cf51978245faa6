#!/usr/bin/env bash
# The device side without torch: a fresh venv with only the core install (numpy, click, onnx, onnxruntime;
# matplotlib too unless NO_PLOTS=1), then `qadtr bench` and `qadtr check` on one model.
#
#   benchmarks/deploy_without_torch.sh MODEL.onnx PATCH.npy [extra options for both commands]
#   e.g. benchmarks/deploy_without_torch.sh runs/export/resnet20_w8a8.qcdq.onnx runs/attack/patch.npy \
#          --data-dir ../shared/data/cifar10
#
# VENV (default: a temp folder) and OUT (default: a temp folder) may be set; the venv is kept for reuse.
# FP32=PATH names the fp32 export for bench's baselines when no manifest.json sits beside MODEL.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
MODEL=$1; PATCH=$2; shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-${TMPDIR:-/tmp}/qadtr-core-venv}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/qadtr-device.XXXXXX")}

mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e "$REPO"
[ "${NO_PLOTS:-0}" = 1 ] || "$VENV/bin/pip" install -q "matplotlib>=3.8"
# The point of this script: torch and brevitas must not be there at all.
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
present = [m for m in ("torch", "torchvision", "brevitas") if importlib.util.find_spec(m)]
sys.exit(f"this venv has {present}: not a torch-free install" if present else 0)
PY
"$VENV/bin/pip" list --format=freeze > "$OUT/pip-freeze.txt"
echo "venv $VENV: $(wc -l < "$OUT/pip-freeze.txt") packages, no torch; results in $OUT"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
FP32_ARGS=(); [ -z "${FP32:-}" ] || FP32_ARGS=(--fp32 "$FP32")
"$VENV/bin/qadtr" bench "$MODEL" "${FP32_ARGS[@]}" --batch 1,8 --threads 1 --warmup 5 --iters 50 --calib-n 64 --quiet \
  --out "$OUT/bench" "$@"
"$VENV/bin/qadtr" check "$MODEL" --patches "$PATCH" --n 200 --quiet --out "$OUT/check" "$@"
"$VENV/bin/qadtr" report "$OUT"
