#!/usr/bin/env bash
# The Windows build, checked on Linux: cross-compiles the core and its native kernel driver
# (tests/native/kernels_check.cc) with Debian's MinGW-w64 and runs them under Wine (Debian's
# wine64). It covers the Windows code paths of the core (file mapping, aligned memory, CPU
# detection) with GCC; the released wheels are built with clang-cl. tests/test_windows.py
# drives it.
#   bash scripts/windows_check.sh build          configure and build (incremental) into $WIN_BUILD
#   bash scripts/windows_check.sh run ARGS...    kernels_check.exe ARGS under Wine
set -euo pipefail
cd "$(dirname "$0")/.."
WIN_BUILD=${WIN_BUILD:-build/windows}
WINE=${WINE:-$(command -v wine64 || echo /usr/lib/wine/wine64)}
case "${1:-}" in
  build)
    for tool in x86_64-w64-mingw32-g++-posix cmake ninja; do
      command -v "$tool" >/dev/null || { echo "windows_check: $tool not found" >&2; exit 3; }
    done
    cmake -S . -B "$WIN_BUILD" -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/x86_64-w64-mingw32.cmake \
      -DPYENGINE_PYTHON=OFF -DPYENGINE_NATIVE_TESTS=ON -DPYENGINE_CUDA=OFF >/dev/null
    ninja -C "$WIN_BUILD" kernels_check >/dev/null
    ;;
  run)
    shift
    export WINEDEBUG=-all WINEPREFIX=${WINEPREFIX:-$(realpath -m "$WIN_BUILD")/wineprefix}
    exec "$WINE" "$WIN_BUILD/kernels_check.exe" "$@"
    ;;
  *)
    echo "usage: windows_check.sh build | run ARGS..." >&2
    exit 2
    ;;
esac
