// Prompt lookup: draft tokens for speculative decoding taken from the sequence itself. Agent
// output copies a lot (JSON that echoes its input, code edits, quotes, tool arguments): where
// the last few tokens occurred before, the tokens that followed them then are a good guess of
// what follows now, and the model checks the guess in one step.
#pragma once

#include <cstdint>
#include <vector>

namespace pyengine {

struct PromptLookupOptions {
  int min_ngram = 2;  // shortest tail that must match (a single token matches too often)
  int max_ngram = 4;  // longest tail tried first
};

// Up to `max_draft` tokens that followed the latest earlier occurrence of the longest tail of
// tokens [n] (from max_ngram down to min_ngram tokens) into draft; empty when no tail occurs
// earlier. Returns draft's size.
int64_t PromptLookup(const std::vector<int32_t>& tokens, int64_t max_draft,
                     const PromptLookupOptions& o, std::vector<int32_t>* draft);

}  // namespace pyengine
