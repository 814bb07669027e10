#include "model/block_weights.h"

#include <string>
#include <utility>

#include "core/errors.h"
#include "core/gguf.h"

namespace pyengine {

void BlockWeights::Bind(const ModelTensors& t, const ModelConfig& c, int64_t l,
                        WeightPacker& packer) {
  using I = TensorId;
  const bool owns_kv = c.kv_layer[l] == l;
  for (auto [id, w] : {std::pair{I::kAttnQ, &attn_q}, {I::kAttnK, &attn_k}, {I::kAttnV, &attn_v},
                       {I::kAttnOutput, &attn_output}, {I::kFfnGate, &ffn_gate},
                       {I::kFfnUp, &ffn_up}, {I::kFfnDown, &ffn_down}}) {
    // Gemma 4 may leave out V (V is then K) and, on KV-shared layers, K and V altogether.
    const bool present = t.Get(id, l).data != nullptr;
    if (present && (owns_kv || (id != I::kAttnK && id != I::kAttnV))) packer.Add(t.Get(id, l), w);
  }
  for (auto [id, v] : {std::pair{I::kAttnNorm, &attn_norm}, {I::kAttnQNorm, &attn_q_norm},
                       {I::kAttnKNorm, &attn_k_norm}, {I::kPostAttentionNorm, &post_attention_norm},
                       {I::kFfnNorm, &ffn_norm}, {I::kPostFfwNorm, &post_ffw_norm}}) {
    if (t.Get(id, l).data) *v = t.Floats(id, l);
  }
  rope_inv_freq = LayerRopeInvFreq(c, l);
}

void CheckHeadGrouping(const GgufFile& f, const ModelConfig& c) {
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int64_t kv = c.n_head_kv_at(l);
    if (kv <= 0 || c.n_head % kv != 0 || c.n_head / kv > kMaxGroup) {
      throw ModelError(f.path() + ": " + std::to_string(c.n_head) + " query heads over " +
                       std::to_string(kv) + " KV heads (layer " + std::to_string(l) +
                       ") is not a supported grouping");
    }
  }
}

void BindEmbeddings(const ModelTensors& t, WeightPacker& packer, TensorView* tok_embd,
                    PackedMatrix* output, bool* tied) {
  *tok_embd = t.Get(TensorId::kTokEmbd);
  const TensorView& out = t.Get(TensorId::kOutput);
  *tied = out.data == nullptr;
  packer.Add(*tied ? *tok_embd : out, output);
}

std::vector<float> LayerRopeInvFreq(const ModelConfig& c, int64_t l) {
  const bool swa = c.layer_is_swa[l];
  return RopeInvFreq(c.n_rot_at(l), swa ? c.rope_base_swa : c.rope_base, swa ? 1.f : c.rope_scale);
}

}  // namespace pyengine
