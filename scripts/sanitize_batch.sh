#!/usr/bin/env bash
# Builds the core and the scheduler stress driver with ThreadSanitizer, then with
# AddressSanitizer + UBSan, and runs each on the tiny synthetic Gemma 3 model (and the ASan build
# on the tiny Gemma 3n model too): eight threads submitting, streaming and cancelling requests
# under memory pressure. Any sanitizer report fails the run.
#   bash scripts/sanitize_batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The core's sources as CMakeLists.txt lists them, with the CUDA stub (no toolkit here).
SRCS=($(sed -n '/^add_library(pyengine_core STATIC/,/^)/s|^  csrc/||p' CMakeLists.txt) cuda/cuda_stub.cc)
python3 -c "import sys; sys.path.insert(0, 'scripts'); from make_model import write_model; write_model('$WORK/tiny.gguf', 'tiny', 'q8_0'); write_model('$WORK/tiny-3n.gguf', 'tiny-3n', 'q8_0')"
for san in thread address,undefined; do
  echo "== -fsanitize=$san"
  g++ -std=c++17 -O1 -g -fsanitize=$san -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -Icsrc tests/native/batch_stress.cc "${SRCS[@]/#/csrc/}" -o "$WORK/stress" -lpthread
  TSAN_OPTIONS=halt_on_error=1 "$WORK/stress" "$WORK/tiny.gguf" 1
  # Gemma 3n's forward pass under ASan/UBSan only: the scheduler TSan watches is the same for
  # both, and 25 layers under TSan take too long. It keeps 20 pages a block: 2 MiB is as tight
  # for it as 1 MiB for Gemma 3.
  # And with a draft model (Gemma 3's tiny file drafting for Gemma 3n's: mostly refused).
  if [[ $san == address* ]]; then
    "$WORK/stress" "$WORK/tiny-3n.gguf" 2
    "$WORK/stress" "$WORK/tiny-3n.gguf" 4 "$WORK/tiny.gguf"
  fi
done
