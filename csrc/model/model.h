// Model: what the scheduler runs. One implementation per architecture (gemma3, gemma3n), each a
// forward pass over a flat batch of tokens from many sequences.
#pragma once

#include <memory>
#include <vector>

#include "core/config.h"
#include "quant/matmul.h"
#include "model/batch.h"

namespace pyengine {

class GgufFile;
class ThreadPool;

// Scratch buffers of one forward call, kept between calls so steady-state decode allocates
// nothing. n is the batch's token count.
struct Workspace {
  std::vector<float> x;      // [n, n_embd] residual stream (gemma3n: the active AltUp stream)
  std::vector<float> xn;     // [n, n_embd] normed input of a sub-block
  std::vector<float> q;      // [n, n_head * head_dim]
  std::vector<float> k;      // [n, n_head_kv * head_dim]
  std::vector<float> v;      // [n, n_head_kv * head_dim]
  std::vector<float> attn;   // [n, n_head * head_dim]
  std::vector<float> o;      // [n, n_embd]
  std::vector<float> gate;   // [n, n_ff]
  std::vector<float> up;     // [n, n_ff]
  std::vector<float> scores; // [n_threads, ...] Attend's scratch: a tile's scores and key chunks
  std::vector<int64_t> attn_tiles;  // Attend's tiles: first token of each, then n
  std::vector<float> rope;   // [n, head_dim] cos (first half) and sin (second half) per token
  // Gemma 3n only.
  std::vector<float> streams;  // [4, n, n_embd] AltUp streams
  std::vector<float> pred;     // [4, n, n_embd] predictions of a layer
  std::vector<float> a;        // [n, n_embd] attention + LAuReL branch
  std::vector<float> laurel;   // [n, n_embd]
  std::vector<float> small;    // [n, max(laurel rank, per-layer width, 16)] narrow products
  std::vector<float> per_layer;  // [n, n_layer, per-layer width] per-layer inputs
  std::vector<float> per_layer_emb;  // [n, n_layer, per-layer width] their embedding rows
  std::vector<float> coefs;    // [n, 16] AltUp router outputs and coefficients
  MatMulInput in;            // the current projection input, in the forms its weights want
};

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
  virtual void Forward(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
                       float* hidden = nullptr) const = 0;
  // The same step where only the argmax of each out row is wanted (first best id, NaN never
  // winning): writes argmax [n_out] and returns true, or returns false (nothing run) where the
  // model has no cheaper way than Forward. The CUDA models find it on the device and bring
  // back n_out ids instead of n_out x n_vocab logits.
  virtual bool ForwardArgmax(const Batch& batch, Workspace& ws, int32_t* argmax,
                             ThreadPool& pool) const {
    return false;
  }
};

// The model of config.arch, its weights bound to `file` (kept mapped by the caller) and
// repacked on `pool`. Throws ModelError / GgufError naming the offending tensor.
std::unique_ptr<Model> LoadModel(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

}  // namespace pyengine
