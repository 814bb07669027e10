#include "runtime/prompt_lookup.h"

#include <algorithm>

namespace pyengine {

int64_t PromptLookup(const std::vector<int32_t>& tokens, int64_t max_draft,
                     const PromptLookupOptions& o, std::vector<int32_t>* draft) {
  draft->clear();
  const int64_t len = static_cast<int64_t>(tokens.size());
  if (max_draft <= 0) return 0;
  for (int64_t n = std::min<int64_t>(o.max_ngram, len - 1); n >= o.min_ngram; --n) {
    const int32_t* tail = tokens.data() + len - n;
    // Latest first: the nearest occurrence is the likeliest to continue the same way. A match
    // must be followed by at least one token, so it starts at len - n - 1 or earlier.
    for (int64_t i = len - n - 1; i >= 0; --i) {
      if (tokens[i] != tail[0] || !std::equal(tail, tail + n, tokens.data() + i)) continue;
      const int64_t from = i + n, to = std::min(len, from + max_draft);
      draft->assign(tokens.begin() + from, tokens.begin() + to);
      return static_cast<int64_t>(draft->size());
    }
  }
  return 0;
}

}  // namespace pyengine
