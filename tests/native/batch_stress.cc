// Scheduler stress driver: many threads submit, stream and cancel requests on one engine while
// another reads the counters; afterwards every KV page must be free or cached. Decoding is
// speculative (prompt lookup, or the draft model given), so drafts are kept, refused and
// dropped under memory pressure too. Built with
// ThreadSanitizer (or AddressSanitizer) by scripts/sanitize_batch.sh, so a data race between
// callers and the scheduler thread is reported even when the outputs look right.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "runtime/engine.h"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [KV_CACHE_MIB [DRAFT_MODEL.gguf]]\n", argv[0]);
    return 2;
  }
  pyengine::EngineOptions opts;
  opts.n_ctx = 256;
  opts.n_threads = 2;
  // Small (1 MiB unless given): preemption and eviction happen.
  opts.kv_cache_bytes = (argc >= 3 ? std::atoll(argv[2]) : 1) << 20;
  opts.scheduler.max_batch = 6;
  opts.scheduler.max_batch_tokens = 48;
  opts.scheduler.num_draft = 8;
  opts.scheduler.draft_max_sequences = 6;  // every sequence of a step may draft
  if (argc == 4) opts.draft_path = argv[3];
  pyengine::Engine eng(argv[1], opts);
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done.load()) {
      const auto kv = eng.kv_stats();
      if (kv.pages_used + kv.pages_cached + kv.pages_free != kv.pages_total) std::abort();
      (void)eng.stats();
    }
  });
  std::vector<std::thread> callers;
  std::atomic<int> steps{0};
  for (int c = 0; c < 8; ++c) {
    callers.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c));
      for (int r = 0; r < 6; ++r) {
        std::vector<int32_t> prompt{2};
        const int n = 2 + static_cast<int>(rng() % 120);
        for (int i = 1; i < n; ++i) prompt.push_back(10 + static_cast<int32_t>(rng() % 2000));
        pyengine::RequestOptions o;
        o.gen.max_tokens = 1 + static_cast<int>(rng() % 30);
        o.gen.sampling.temperature = (r % 2) ? 0.8f : 0.f;
        o.gen.sampling.seed = rng();
        o.gen.ignore_eos = true;
        o.notify = (r % 3) == 0;
        auto req = eng.Submit(prompt, o);
        const int cancel_at = (rng() % 4 == 0) ? static_cast<int>(rng() % 5) : -1;
        pyengine::GenerationStep s;
        for (int k = 0; req->Next(&s, -1) && !s.done; ++k) {
          ++steps;
          if (k == cancel_at) eng.Cancel(*req);
        }
        if (o.notify) (void)eng.WaitReady(0);
      }
    });
  }
  for (auto& t : callers) t.join();
  done = true;
  watcher.join();
  const auto kv = eng.kv_stats();
  const auto st = eng.stats();
  std::printf("%d steps, %lld preemptions, %lld evictions, %lld of %lld drafts kept, pages used %lld\n",
              steps.load(), static_cast<long long>(st.preemptions),
              static_cast<long long>(kv.evictions), static_cast<long long>(st.draft_accepted),
              static_cast<long long>(st.drafted), static_cast<long long>(kv.pages_used));
  return kv.pages_used == 0 && st.running == 0 && st.waiting == 0 ? 0 : 1;
}
