#!/usr/bin/env bash
# The AArch64 build, checked on an x86-64 machine: cross-compiles the core and its native kernel
# driver (tests/native/kernels_check.cc) with Debian's crossbuild-essential-arm64 and runs them
# under qemu-aarch64 (Debian's qemu-user). tests/test_arm.py drives it.
#   bash scripts/arm_check.sh build            configure and build (incremental) into $ARM_BUILD
#   bash scripts/arm_check.sh run CPU ARGS...  kernels_check ARGS under qemu's CPU model CPU:
#                                              "max" (ARMv8.x with sdot) or "cortex-a53" (v8.0)
set -euo pipefail
cd "$(dirname "$0")/.."
ARM_BUILD=${ARM_BUILD:-build/aarch64}
SYSROOT=/usr/aarch64-linux-gnu
case "${1:-}" in
  build)
    for tool in aarch64-linux-gnu-g++ qemu-aarch64 cmake ninja; do
      command -v "$tool" >/dev/null || { echo "arm_check: $tool not found" >&2; exit 3; }
    done
    cmake -S . -B "$ARM_BUILD" -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
      -DPYENGINE_PYTHON=OFF -DPYENGINE_NATIVE_TESTS=ON -DPYENGINE_CUDA=OFF >/dev/null
    ninja -C "$ARM_BUILD" kernels_check >/dev/null
    ;;
  run)
    cpu=$2
    shift 2
    exec qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$ARM_BUILD/kernels_check" "$@"
    ;;
  *)
    echo "usage: arm_check.sh build | run CPU ARGS..." >&2
    exit 2
    ;;
esac
