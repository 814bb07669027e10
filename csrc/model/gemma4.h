// Gemma4Model: the Gemma 4 text model (E2B, E4B, 31B and the 26B-A4B mixture of experts) as
// llama.cpp computes it: full and sliding layers with their own head sizes, KV-head counts and
// RoPE (proportional on the full layers, through the file's rope_freqs factors); V taken from K
// where a layer has no V projection, a weightless V norm, attention scale 1; KV shared by the
// last layers; Gemma 3n's per-layer inputs, added after the FFN; a per-layer output scale;
// double-wide FFNs; and on MoE layers a routed set of experts beside the dense FFN.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"
#include "model/block_weights.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/per_layer_inputs.h"
#include "quant/matmul.h"

namespace pyengine {

class Gemma4Model : public Model {
 public:
  // Binds and checks the tensors of `file` (kept mapped by the caller) and repacks the matrices
  // on `pool`. Throws ModelError naming a tensor whose presence, shape or type does not fit.
  Gemma4Model(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

  const ModelConfig& config() const override { return cfg_; }
  void Forward(const Batch& batch, float* out, float* hidden = nullptr) const override {
    Run(batch, ws_, out, pool_, hidden);
  }

 private:
  // One MoE layer's experts; each expert's matrices are packed on their own, so a step reads
  // only the experts its tokens chose.
  struct Experts {
    PackedMatrix router;               // [n_expert, n_embd]
    std::vector<float> router_scale;   // [n_embd]
    std::vector<float> pre_norm, post_norm_shared, post_norm;  // [n_embd] pre_ffw_norm_2, ...
    std::vector<PackedMatrix> gate_up;  // [n_expert] x [2 * n_ff_exp, n_embd] (fused form)
    std::vector<PackedMatrix> gate, up; // [n_expert] x [n_ff_exp, n_embd] (split form)
    std::vector<PackedMatrix> down;     // [n_expert] x [n_embd, n_ff_exp]
    std::vector<float> down_scale;      // [n_expert], empty: 1
  };
  struct Layer : BlockWeights {
    bool has_v = true;                 // false: V is K's projection
    PackedMatrix inp_gate, proj;       // [P, n_embd], [n_embd, P] per-layer input
    std::vector<float> post_norm;      // [n_embd]
    float out_scale = 1.f;
    std::unique_ptr<Experts> moe;      // null on dense layers
  };

  void Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool, float* hidden) const;
  // o [n, E] = down . (gelu(gate . xn) * (up . xn)) with the layer's dense FFN of width F.
  void DenseFfn(const Layer& L, int64_t l, const float* xn, int64_t n, float* o, Workspace& ws,
                ThreadPool& pool) const;
  // out [n, E] = the experts' part of an MoE layer on attn_out a [n, E] (before its post norm).
  void ExpertFfn(const Experts& X, const float* a, int64_t n, float* out, Workspace& ws,
                 ThreadPool& pool) const;
  // Fills ws.expert_of / ws.expert_w from the router on a [n, E].
  void Route(const Experts& X, const float* a, int64_t n, Workspace& ws, ThreadPool& pool) const;

  ModelConfig cfg_;
  ThreadPool& pool_;
  mutable Workspace ws_;
  std::unique_ptr<WeightArena> arena_;
  TensorView tok_embd_;             // [n_vocab, n_embd]
  PackedMatrix output_;             // [n_vocab, n_embd], token_embd when tied
  bool tied_ = false;
  PerLayerInputs per_layer_;        // when n_embd_per_layer > 0
  std::vector<float> output_norm_;  // [n_embd]
  std::vector<Layer> layers_;
};

// The architecture's entry (architecture.h): its configuration rules and its model.
void ConfigureGemma4(const GgufFile& file, ModelConfig& config);
std::unique_ptr<Model> LoadGemma4(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

}  // namespace pyengine
