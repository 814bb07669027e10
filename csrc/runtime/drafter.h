// Drafter: what proposes speculative decoding's draft tokens from a model of its own (the
// scheduler's prompt lookup needs none). The scheduler hands it each drafting sequence's state,
// tokens and limit once per step, from its own thread.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/block_table.h"

namespace pyengine {

// What a drafter holds of one sequence: blocks, and the tokens whose keys and values they hold
// (position i holds computed[i]).
struct DraftState {
  BlockTable table;
  std::vector<int32_t> computed;
};

struct DraftJob {
  DraftState* state;
  const std::vector<int32_t>* tokens;  // the sequence so far; its last token is pending
  int64_t limit;                       // most tokens to propose
  std::vector<int32_t>* draft;         // out: the proposal (may be shorter, or empty)
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // Proposals for every job (throws what its model throws; the states stay consistent).
  virtual void Propose(std::vector<DraftJob>& jobs) = 0;
  virtual void Release(DraftState& s) = 0;
};

}  // namespace pyengine
