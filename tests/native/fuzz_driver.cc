// Sanitizer fuzz driver: opens every file named on the command line with the GGUF reader
// ("reader") or builds a whole engine from it and runs a few tokens ("engine"). Built with
// AddressSanitizer and UBSan by scripts/fuzz_native.sh, so an out-of-bounds read or undefined
// behaviour on a hostile file is reported even when it would not crash.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "runtime/engine.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s reader|engine FILE...\n", argv[0]);
    return 2;
  }
  const bool engine = std::string(argv[1]) == "engine";
  int ok = 0, errors = 0;
  for (int i = 2; i < argc; ++i) {
    try {
      if (engine) {
        pyengine::EngineOptions opts;
        opts.n_ctx = 64;
        opts.n_threads = 2;
        opts.kv_cache_bytes = int64_t{4} << 20;
        pyengine::Engine e(argv[i], opts);
        std::vector<int32_t> ids = e.tokenizer().Encode("fuzz text", true, false);
        if (ids.size() > 8) ids.resize(8);
        e.Logits(ids);
      } else {
        pyengine::GgufFile f(argv[i]);
      }
      ++ok;
    } catch (const std::exception&) {
      ++errors;  // a clean error is the expected outcome for most mutations
    }
  }
  std::printf("%d opened, %d clean errors\n", ok, errors);
  return 0;
}
