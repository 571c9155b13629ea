#!/usr/bin/env bash
# Idempotent environment setup for this repository.
#
#   bash tools/install.sh            # creates ./.venv (or reuses it) and installs the pinned stack
#   VENV=/path/to/venv bash tools/install.sh
#
# Versions are pinned in requirements.txt (the single place). mmcv 2.1.0 has no CPU wheel on
# PyPI, so it is compiled with ops (~11 min on 2 cores) unless `import mmcv._ext` already works.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQ="$ROOT/requirements.txt"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

pin() {  # pin NAME -> "NAME==VERSION" line from requirements.txt
  local line
  line=$(grep -iE "^$1==" "$REQ") || die "no pin for '$1' in $REQ"
  line=${line%%#*}
  echo "${line//[[:space:]]/}"
}

[ -f "$REQ" ] || die "missing $REQ"
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; set PYTHON=/path/to/python3.11"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create venv at $VENV (is python3-venv installed?)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

log "torch ($(pin torch)); the local CPU wheel is used when present"
"${PIP[@]}" "$(pin torch)" || die "torch install failed"

log "build/runtime helpers (setuptools>=77,<81: mmcv's setup.py imports pkg_resources)"
"${PIP[@]}" "setuptools>=77,<81" wheel ninja "$(pin numpy)" || die "setuptools/wheel install failed"

log "mmengine and pure-python dependencies"
"${PIP[@]}" "$(pin mmengine)" "$(pin opencv-python)" "$(pin pycocotools)" \
  "$(pin matplotlib)" "$(pin lvis)" "$(pin pytest)" "$(pin ruff)" || die "dependency install failed"

if "$PY" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  log "mmcv 2.1.0 with compiled ops already importable: skipping the build"
else
  log "building $(pin mmcv) with ops (about 11 minutes on 2 cores; pip caches the wheel afterwards)"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" --no-build-isolation "$(pin mmcv)" \
    || die "mmcv build failed (needs gcc, python headers and setuptools<81)"
  "$PY" -c "import mmcv._ext" || die "mmcv installed but mmcv._ext does not import"
fi

log "mmdet"
"${PIP[@]}" "$(pin mmdet)" || die "mmdet install failed"

log "deployment runtimes (onnx, onnxruntime, openvino) and NNCF (INT8 for OpenVINO)"
"${PIP[@]}" "$(pin onnx)" "$(pin onnxruntime)" "$(pin openvino)" "$(pin nncf)" \
  || die "onnx/onnxruntime/openvino/nncf install failed"

log "native deformable attention for ONNX Runtime / OpenVINO (skipped with a message if it cannot be built)"
"$PY" "$ROOT/tools/misc/build_native_ops.py" || log "native operator build step failed; the standard-operator graphs still work"

log "checking the stack"
"$PY" - <<'PY' || die "import check failed"
import torch, mmengine, mmcv, mmdet, mmcv._ext, pycocotools, lvis, onnx, onnxruntime, openvino, nncf  # noqa: F401
print(f"[install] torch {torch.__version__}, mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}")
PY
log "done: activate with 'source $VENV/bin/activate'"
