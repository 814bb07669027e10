#!/usr/bin/env bash
# The CUDA backend on the CPU emulator (PYENGINE_CUDA=EMULATE) built with AddressSanitizer +
# UBSan, running tests/test_cuda.py: emulated device allocations are exact-size heap blocks, so
# a kernel reading or writing past a buffer is reported. Extra arguments go to pytest.
#   bash scripts/sanitize_cuda_emulated.sh [-k selftest]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=build/cuda-emulated-asan
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S . -B "$BUILD" -G Ninja -DPYENGINE_CUDA=EMULATE -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build "$BUILD"
# A pyengine package whose extension is this build (the sources linked, not copied).
SITE="$BUILD/site"
rm -rf "$SITE" && mkdir -p "$SITE/pyengine"
for f in pyengine/*; do
  case "$(basename "$f")" in _core*|__pycache__) ;; *) ln -s "$PWD/$f" "$SITE/pyengine/";; esac
done
ln -s "$PWD/$BUILD"/_core*.so "$SITE/pyengine/"
# Python itself is not instrumented: the runtimes are preloaded, leaks (Python's own) not counted.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$PY" - "$SITE" "$@" <<'PYEOF'
import sys
# An editable install's import hook would hand out the regular extension: drop it.
sys.meta_path[:] = [f for f in sys.meta_path if "Redirecting" not in type(f).__name__]
sys.path.insert(0, sys.argv[1])
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_cuda.py", *sys.argv[2:]]))
PYEOF
