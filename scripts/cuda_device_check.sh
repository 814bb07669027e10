#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU and the CUDA toolkit, network or not:
# builds pyengine with the CUDA backend for the local GPU only, runs the CUDA tests (the CUDA
# backend against the CPU backend), and with --bench the side-by-side benchmark against
# llama.cpp's CUDA build (bench_batch.py --cuda; it builds llama-server from the pinned sdist,
# which must already be unpacked under bench_out/llama-server-cuda/ where pip cannot download:
# a trimmed copy made by trim_llama_source.py, given as LLAMA_SOURCE, is unpacked there).
#   [LLAMA_SOURCE=llama-trimmed.tar.gz] bash scripts/cuda_device_check.sh [--bench]
# Pure-Python wheels of packages missing there (gguf, for the synthetic models) may be put in
# .whl/ first; they are installed into a private folder, not over the system's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pyengine-site .whl/*.whl
  export PYTHONPATH=/tmp/pyengine-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
export CMAKE_ARGS="-DPYENGINE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${ARCH}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
t0=$(date +%s)
"$PY" -m pip install -q --no-build-isolation --no-deps .
echo "built in $(( $(date +%s) - t0 )) s"
(cd tests && "$PY" -c "from pyengine import _core; print(_core.cuda_device_info()); assert _core.cuda_available()")
(cd tests && "$PY" -m pytest -q -p no:cacheprovider test_cuda.py)
if [[ "${1:-}" == "--bench" ]]; then
  if [[ -n "${LLAMA_SOURCE:-}" ]]; then
    mkdir -p bench_out/llama-server-cuda
    tar -xzf "$LLAMA_SOURCE" -C bench_out/llama-server-cuda
  fi
  for dtype in q8_0 f16; do
    "$PY" scripts/bench_batch.py --cuda --dtype "$dtype" --streams 1,8,32,64 --gen 64 \
      --prompt-tokens 32 --prefix-tokens 512 --reps 1 --threads 8 --out "bench_out/cuda-$dtype"
  done
fi
