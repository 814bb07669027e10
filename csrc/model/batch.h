// Batch: the flat token list of one forward pass: the next tokens of every sequence in the step,
// side by side (a decoding sequence brings one, a prompt a chunk), each with its own position
// and KV blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/block_table.h"

namespace pyengine {

struct Batch {
  std::vector<int32_t> tokens;    // [n] token ids
  std::vector<int32_t> pos;       // [n] position of each token in its sequence
  std::vector<int32_t> seq;       // [n] index into views of the token's sequence
  std::vector<int32_t> out_rows;  // [n_out] ascending indices of the tokens whose logits are wanted
  std::vector<int32_t> hidden_rows;  // [n_hidden] ascending indices of the tokens whose final
                                     // (normed) hidden states are wanted (embeddings)
  std::vector<KvView> views;      // [n_seq] keys and values of each sequence

  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  void Clear() {
    tokens.clear();
    pos.clear();
    seq.clear();
    out_rows.clear();
    hidden_rows.clear();
    views.clear();
  }
  // Appends tokens [n] of sequence `s` at positions pos0 .. pos0+n-1; with `logits`, the last
  // of them (all of them when every_logit) gets a row of logits; with `hidden`, every one of
  // them a row of hidden states.
  void Add(int32_t s, const int32_t* ids, int64_t n, int64_t pos0, bool logits, bool every_logit,
           bool hidden = false) {
    for (int64_t i = 0; i < n; ++i) {
      if (logits && (every_logit || i == n - 1)) out_rows.push_back(static_cast<int32_t>(tokens.size()));
      if (hidden) hidden_rows.push_back(static_cast<int32_t>(tokens.size()));
      tokens.push_back(ids[i]);
      pos.push_back(static_cast<int32_t>(pos0 + i));
      seq.push_back(s);
    }
  }
};

}  // namespace pyengine
