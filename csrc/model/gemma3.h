// Gemma3Model: the Gemma 3 text model's weights and forward pass, as llama.cpp computes it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"
#include "quant/matmul.h"
#include "runtime/batch.h"

namespace pyengine {

class GgufFile;
class ThreadPool;

// Scratch buffers of one forward call, kept between calls so steady-state decode allocates nothing.
struct Workspace {
  std::vector<float> x;      // [n, n_embd] residual stream
  std::vector<float> xn;     // [n, n_embd] normed input of a sub-block
  std::vector<float> q;      // [n, n_head * head_dim]
  std::vector<float> k;      // [n, n_head_kv * head_dim]
  std::vector<float> v;      // [n, n_head_kv * head_dim]
  std::vector<float> attn;   // [n, n_head * head_dim]
  std::vector<float> o;      // [n, n_embd]
  std::vector<float> gate;   // [n, n_ff]
  std::vector<float> up;     // [n, n_ff]
  std::vector<float> scores; // [n_threads, heads per KV head, longest span] attention weights
  std::vector<float> rope;   // [n, head_dim] cos (first half) and sin (second half) per token
  MatMulInput in;            // the current projection input, in the forms its weights want
};

class Gemma3Model {
 public:
  // Binds the tensors of `file` (kept mapped by the caller) and checks their shapes and types;
  // repacks what the kernels want repacked (on `pool`) and lets the file's copy of those pages
  // go. Throws ModelError / GgufError naming the offending tensor.
  Gemma3Model(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

  const ModelConfig& config() const { return cfg_; }

  // Runs the batch's tokens, each at its position in its own sequence, writing their keys and
  // values through the sequence's view (whose blocks must cover them and hold every earlier
  // position the token attends to). Tokens of one sequence come in position order. Writes the
  // logits of batch.out_rows to out [n_out, n_vocab] (nothing when there are none), and the
  // final normed hidden states of batch.hidden_rows to hidden [n_hidden, n_embd] (the vectors
  // the output projection would read: what llama.cpp pools into embeddings).
  // Token ids must be inside the vocabulary (checked: EngineError).
  void Forward(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool,
               float* hidden = nullptr) const;

 private:
  struct Layer {
    PackedMatrix attn_q, attn_k, attn_v, attn_output;
    PackedMatrix ffn_gate, ffn_up, ffn_down;
    std::vector<float> attn_norm, attn_q_norm, attn_k_norm, post_attention_norm;  // [n_embd] / [head_dim]
    std::vector<float> ffn_norm, post_ffw_norm;                                   // [n_embd]
    std::vector<float> rope_inv_freq;  // [head_dim / 2] base^(-2i/d) * position scale
  };

  void Attention(int64_t layer, const Batch& batch, Workspace& ws, ThreadPool& pool) const;

  ModelConfig cfg_;
  std::unique_ptr<WeightArena> arena_;  // every packed matrix below lives here
  TensorView tok_embd_;   // [n_vocab, n_embd] rows looked up per token
  PackedMatrix output_;   // [n_vocab, n_embd], token_embd when tied
  bool tied_ = false;     // output_ is token_embd
  std::vector<float> output_norm_;  // [n_embd]
  std::vector<Layer> layers_;
};

}  // namespace pyengine
