// The weights of one Gemma 3 decoder layer (attention and feed-forward), which Gemma 3n keeps as
// they are, and what both models bind besides: bound from the architecture's table once.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.h"
#include "model/ops.h"
#include "model/tensor_table.h"
#include "quant/matmul.h"

namespace pyengine {

struct BlockWeights {
  PackedMatrix attn_q, attn_k, attn_v;  // [q_dim, n_embd], [kv_dim, n_embd] x2
  PackedMatrix attn_output;             // [n_embd, q_dim]
  PackedMatrix ffn_gate, ffn_up;        // [n_ff, n_embd]
  PackedMatrix ffn_down;                // [n_embd, n_ff]
  std::vector<float> attn_norm, post_attention_norm, ffn_norm, post_ffw_norm;  // [n_embd]
  std::vector<float> attn_q_norm, attn_k_norm;                                 // [head_dim]
  std::vector<float> rope_inv_freq;  // [n_rot / 2] base^(-2i/n_rot) * position scale

  // Layer l's weights from `t`, its matrices queued on `packer`. A layer that reads an earlier
  // layer's KV (Gemma 3n) still carries k and v projections: checked by `t`, not packed. An
  // optional weight the file lacks (Gemma 4's V, K on shared layers) stays empty.
  void Bind(const ModelTensors& t, const ModelConfig& c, int64_t l, WeightPacker& packer);
};

// Throws ModelError unless the query heads share the KV heads evenly, at most kMaxGroup each.
void CheckHeadGrouping(const GgufFile& f, const ModelConfig& c);

// The token embeddings (left mapped: a token reads its row) and the output projection, queued
// on `packer`; with tied embeddings the output is token_embd's packed copy, and lookups read
// rows of that copy, so the released file pages stay released.
void BindEmbeddings(const ModelTensors& t, WeightPacker& packer, TensorView* tok_embd,
                    PackedMatrix* output, bool* tied);

// RoPE inverse frequencies of layer l: sliding layers the local base unscaled, global layers the
// global base with linear scaling.
std::vector<float> LayerRopeInvFreq(const ModelConfig& c, int64_t l);

}  // namespace pyengine
