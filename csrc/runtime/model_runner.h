// ModelRunner: executes one step the scheduler planned. It lays the step's token runs out as one
// flat batch, runs the model's forward pass and hands back where each run's outputs are. It
// knows nothing of requests, sampling or memory policy: the scheduler decides, the runner runs,
// and the sampling stage (Scheduler::Sample) turns logits into tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kv/block_table.h"
#include "model/batch.h"
#include "model/model.h"

namespace pyengine {

// One sequence's share of a step: n tokens from position pos.
struct StepRun {
  const int32_t* tokens = nullptr;  // [n] the tokens at positions pos .. pos + n - 1
  int64_t pos = 0;
  int64_t n = 0;
  KvView view;                      // the sequence's keys and values
  bool logits = false;              // the last token gets a row of logits ...
  bool every_logit = false;         // ... or every token does (scoring)
  bool hidden = false;              // every token gets a row of final hidden states (embeddings)
  bool argmax_suffices = false;     // its logits row is only ever argmax'ed (plain greedy)
};

// Where a step's outputs are: valid until the next Run.
struct StepOutput {
  float* logits = nullptr;          // [rows, n_vocab], or null when only argmax was brought back;
                                    // sampling may edit its rows (a grammar's mask)
  const int32_t* argmax = nullptr;  // [rows] when the model found the argmax where it computed
  const float* hidden = nullptr;    // [hidden rows, n_embd]
  std::vector<int64_t> row;         // [runs] first logits row of each run, -1 when none
  std::vector<int64_t> hidden_row;  // [runs] first hidden row of each run, -1 when none
};

class ModelRunner {
 public:
  ModelRunner(const Model& model, ThreadPool& pool) : model_(model), pool_(pool) {}
  const Model& model() const { return model_; }
  ThreadPool& pool() const { return pool_; }

  // Runs the step; throws what the model throws (the step then computed nothing usable).
  const StepOutput& Run(const std::vector<StepRun>& runs);

 private:
  const Model& model_;
  ThreadPool& pool_;
  Batch batch_;
  std::vector<float> logits_;   // [rows, n_vocab]
  std::vector<int32_t> argmax_; // [rows]
  std::vector<float> hidden_;   // [hidden rows, n_embd]
  StepOutput out_;
};

}  // namespace pyengine
