// Model: what the scheduler runs. One implementation per architecture and backend (the CPU's
// gemma3 and gemma3n here, the CUDA ones in cuda/), each a forward pass over a flat batch of
// tokens from many sequences. A model owns its scratch and its threads or device: the interface
// names neither.
#pragma once

#include <memory>
#include <vector>

#include "core/config.h"
#include "model/batch.h"

namespace pyengine {

class GgufFile;
class ThreadPool;

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // Runs the batch's tokens, each at its position in its own sequence, writing their keys and
  // values through the sequence's view (whose blocks must cover them and hold every earlier
  // position the token attends to). Tokens of one sequence come in position order. Writes the
  // logits of batch.out_rows to out [n_out, n_vocab] (nothing when there are none), and the
  // final normed hidden states of batch.hidden_rows to hidden [n_hidden, n_embd] (the vectors
  // the output projection would read: what llama.cpp pools into embeddings).
  // Token ids must be inside the vocabulary (checked: EngineError).
  // One caller at a time (the scheduler's thread).
  virtual void Forward(const Batch& batch, float* out, float* hidden = nullptr) const = 0;
  // The same step where only the argmax of each out row is wanted (first best id, NaN never
  // winning): writes argmax [n_out] and returns true, or returns false (nothing run) where the
  // model has no cheaper way than Forward. The CUDA models find it on the device and bring
  // back n_out ids instead of n_out x n_vocab logits.
  virtual bool ForwardArgmax(const Batch& batch, int32_t* argmax) const { return false; }
};

// The CPU model of config.arch, its weights bound to `file` (kept mapped by the caller) and
// repacked on `pool`, on which it also runs (the pool must outlive it). Throws ModelError / GgufError naming the offending tensor.
std::unique_ptr<Model> LoadModel(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

}  // namespace pyengine
