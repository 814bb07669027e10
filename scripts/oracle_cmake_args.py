#!/usr/bin/env python3
"""Print the CMake arguments that build llama.cpp (the oracle and speed peer) for this CPU.

llama.cpp's default build uses -march=native, which on CPUs that advertise AMX compiles its AMX
matrix path; some virtual machines advertise AMX but do not enable its register state, and the
first tile load then kills the process with SIGILL. This script asks for the instruction sets the
CPU reports one by one (the same code -march=native would choose, AVX-512 included) but leaves
AMX out. On non-x86 machines it prints nothing and the native build is kept.

    CMAKE_ARGS="$(python3 scripts/oracle_cmake_args.py)" pip install llama-cpp-python==...
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

# /proc/cpuinfo flag -> llama.cpp (ggml) CMake option
FLAGS = {
    "sse4_2": "GGML_SSE42",
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI",
    "avx512f": "GGML_AVX512",
    "avx512_vbmi": "GGML_AVX512_VBMI",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args() -> list[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    flags = cpu_flags()
    if not flags:
        return []
    on = {opt for flag, opt in FLAGS.items() if flag in flags}
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{opt}={'ON' if opt in on else 'OFF'}" for opt in sorted(set(FLAGS.values()))]
    args += [f"-D{opt}=OFF" for opt in NEVER]
    return args


if __name__ == "__main__":
    sys.stdout.write(" ".join(cmake_args()))
