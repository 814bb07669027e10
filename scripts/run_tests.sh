#!/usr/bin/env bash
# The whole test procedure, as the README's test command and CI run it: a virtual environment
# (.venv, made when missing), llama-cpp-python (the oracle) built from source, the project with
# its test extra, then the test suite. Arguments go to pytest (default: -q tests).
set -euo pipefail
cd "$(dirname "$0")/.."
# Other CPUs and systems, emulated: qemu-user runs the package on older x86-64 models and the
# AArch64 build (cross-compiled with crossbuild-essential-arm64), Wine the Windows build
# (cross-compiled with MinGW-w64). Debian's packages, installed where missing and possible
# (tests/test_arm.py, test_x86_levels.py and test_windows.py skip without them).
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null \
    || ! command -v x86_64-w64-mingw32-g++-posix >/dev/null || ! [ -x /usr/lib/wine/wine64 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends qemu-user crossbuild-essential-arm64 g++-mingw-w64-x86-64-posix \
      wine64) >/dev/null || echo "run_tests: could not install the emulators and cross compilers" >&2
  fi
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# llama.cpp is built for this CPU's instruction sets but without AMX (see the script). pip's own
# wheel cache ignores build flags, so the oracle's wheel is kept in a folder named after them:
# a wheel built for another CPU (or with AMX) is never picked up.
ORACLE="$(grep -o 'llama-cpp-python==[0-9][0-9A-Za-z.]*' pyproject.toml | head -1)"
ORACLE_ARGS="$(python scripts/oracle_cmake_args.py)"
KEY="$(printf '%s %s' "$ORACLE" "$ORACLE_ARGS" | sha256sum | cut -c1-16)"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/pyengine-oracle/$KEY"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  CMAKE_ARGS="$ORACLE_ARGS" python -m pip wheel --no-cache-dir --no-deps -w "$WHEELS" "$ORACLE"
fi
python -m pip install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
python -m pip install ".[test]"
if [ "$#" -eq 0 ]; then set -- -q tests; fi
pytest "$@"
