#!/usr/bin/env bash
# Builds the core with AddressSanitizer + UBSan (scalar kernels, no Python) and feeds it
# mutated GGUF files: truncations, byte flips and 64-bit overwrites of a small file with every
# metadata type, and of the headers of tiny synthetic Gemma 3 and Gemma 3n models, both as
# llama.cpp writes them and as Ollama's blobs are (scripts/ollama_style.py: renamed and missing
# keys, tokens past the embedding, a vision tower, a short per-layer table). Any sanitizer
# report fails the run.
#   bash scripts/fuzz_native.sh [N_READER] [N_ENGINE]
set -euo pipefail
cd "$(dirname "$0")/.."
N_READER=${1:-3000}
N_ENGINE=${2:-400}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The core's sources as CMakeLists.txt lists them, with the CUDA stub (no toolkit here).
SRCS=($(sed -n '/^add_library(pyengine_core STATIC/,/^)/s|^  csrc/||p' CMakeLists.txt) cuda/cuda_stub.cc)
# The ISA files are compiled without their flags: they then define no kernels and the scalar
# reference runs, which is what the sanitizers should watch.
g++ -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
  -Icsrc tests/native/fuzz_driver.cc "${SRCS[@]/#/csrc/}" -o "$WORK/fuzz" -lpthread
python3 - "$WORK" "$N_READER" "$N_ENGINE" <<'PY'
import random, sys
from pathlib import Path
sys.path[:0] = ["tests", "scripts"]
from gguf_builder import build_gguf, mutate
from test_gguf import ALL_TYPES_KVS, TENSORS
from make_model import write_model
from ollama_style import VisionSpec, rewrite
from quantize_model import quantize
work, n_reader, n_engine = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
write_model(work / "tiny.gguf", "tiny", "q8_0")
write_model(work / "tiny-3n.gguf", "tiny-3n", "q8_0")
# K-quant and 32-value blocks, as llama.cpp's Q4_K_M mix writes them.
for preset in ("tiny-k", "tiny-3n-k"):
    write_model(work / f"{preset}-f32.gguf", preset, "f32")
    quantize(work / f"{preset}-f32.gguf", work / f"{preset}-q4_k_m.gguf", "Q4_K_M")
small_vision = VisionSpec(width=64, ff=128, blocks=1, heads=2, image=28, patch=14, tokens_per_image=4)
rewrite(work / "tiny.gguf", work / "tiny-ollama.gguf", ["all"], vision=small_vision)
write_model(work / "tiny-3n-mm.gguf", "tiny-3n", "q8_0", n_vocab=3136, n_vocab_per_layer=3072)
rewrite(work / "tiny-3n-mm.gguf", work / "tiny-3n-ollama.gguf", ["all"])
rng = random.Random(1)
small = build_gguf(ALL_TYPES_KVS, TENSORS)
names = ("tiny.gguf", "tiny-3n.gguf", "tiny-ollama.gguf", "tiny-3n-ollama.gguf",
         "tiny-k-q4_k_m.gguf", "tiny-3n-k-q4_k_m.gguf")
models = [(work / name).read_bytes() for name in names]
(work / "reader").mkdir()
for i in range(n_reader):
    (work / "reader" / f"{i}.gguf").write_bytes(mutate(small, len(small), rng))
(work / "engine").mkdir()
for i in range(n_engine):  # each model in turn; 128 KiB covers any one's metadata
    (work / "engine" / f"{i}.gguf").write_bytes(mutate(models[i % len(models)], 1 << 17, rng))
PY
for kind in reader engine; do
  printf '%s: ' "$kind"
  find "$WORK/$kind" -name '*.gguf' -print0 | xargs -0 "$WORK/fuzz" "$kind"
done
