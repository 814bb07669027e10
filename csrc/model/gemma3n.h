// Gemma3nModel: the Gemma 3n text model (the e2b / e4b tiers) as llama.cpp computes it: four
// AltUp streams (predict, correct, router, unembedding), LAuReL, per-layer token embeddings and
// their projection, activation sparsity in the first layers, a weightless V norm, KV shared by
// the later layers, and a final soft-cap.
#pragma once

#include <array>
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

class Gemma3nModel : public Model {
 public:
  // Fixed by the architecture (llama.cpp ignores the file's keys for them).
  static constexpr int kStreams = 4;           // AltUp streams; stream 0 is the active one
  static constexpr int64_t kPerLayer = 256;    // width of each layer's per-layer input
  static constexpr int64_t kLaurelRank = 64;
  static constexpr int64_t kSparseLayers = 10;  // layers with activation sparsity
  static constexpr float kSparsityStd = 1.6448533535003662f;  // the normal's 95% quantile

  // Binds and checks the tensors of `file` (kept mapped by the caller: the per-layer token
  // embeddings, larger than the rest of the model at real sizes, stay there and only the rows
  // a token needs are read); repacks the matrices on `pool`. Throws ModelError naming a tensor
  // whose shape or type does not fit.
  Gemma3nModel(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

  const ModelConfig& config() const override { return cfg_; }
  void Forward(const Batch& batch, float* out, float* hidden = nullptr) const override {
    Run(batch, ws_, out, pool_, hidden);
  }

 private:
  // A matrix too narrow to pack (4 or 16 values a row): dequantized, with the rounding its
  // type makes the reference apply to the input.
  struct Small {
    std::vector<float> w;  // [rows, cols]
    int64_t rows = 0, cols = 0;
    GgmlType type = GgmlType::kF32;
    void Apply(const float* x, float* y) const;  // y [rows] = w . x
  };
  // Gemma 3's decoder weights and what Gemma 3n adds to a layer.
  struct Layer : BlockWeights {
    PackedMatrix inp_gate, proj;       // [256, n_embd], [n_embd, 256] per-layer input
    PackedMatrix laurel_l, laurel_r;   // [64, n_embd], [n_embd, 64]
    PackedMatrix altup_router;         // [4, n_embd]
    Small altup_predict_coef;          // [16, 4]
    Small altup_correct_coef;          // [4, 4]
    std::vector<float> post_norm, laurel_post_norm;             // [n_embd]
    std::vector<float> altup_router_norm, altup_correct_scale;  // [n_embd]
  };

  void Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool, float* hidden) const;
  // The forward pass's sub-blocks, in the order it runs them. Each works on the workspace's
  // Gemma 3n buffers for the batch's n tokens.
  // streams [4, n, E]: the scaled token embedding and its three AltUp projections.
  void Streams(const Batch& batch, Workspace& ws, ThreadPool& pool) const;
  // pred [4, n, E]: AltUp's prediction of the streams from the router on stream 0.
  void Predict(const Layer& L, int64_t n, Workspace& ws, ThreadPool& pool) const;
  // streams: corrected by the layer's output o [n, E] on the active stream.
  void Correct(const Layer& L, const float* o, int64_t n, Workspace& ws, ThreadPool& pool) const;
  // streams 1..3 += RMSNorm(proj . (gelu(inp_gate . scaled stream 0) * per-layer input l)).
  void AddPerLayerInput(const Layer& L, int64_t l, int64_t n, Workspace& ws, ThreadPool& pool) const;
  // a [n, E]: the mean of stream 0 and the other streams projected back and rescaled.
  void Unembed(int64_t n, Workspace& ws, ThreadPool& pool) const;
  // coefs [n, 4] = tanh(altup_router . RMSNorm(x, altup_router_norm) / n_embd)
  void Route(const Layer& L, const float* x, int64_t n, float* r, Workspace& ws,
             ThreadPool& pool) const;
  // o [n, E] = RMSNorm(in) * w, row by row.
  void NormRows(const float* in, const std::vector<float>& w, float* o, int64_t n,
                ThreadPool& pool) const;

  ModelConfig cfg_;
  ThreadPool& pool_;      // the forward pass's threads (the packing's too)
  mutable Workspace ws_;  // one forward pass at a time (Model::Forward)
  std::unique_ptr<WeightArena> arena_;
  TensorView tok_embd_;             // [n_vocab, n_embd]
  PackedMatrix output_;             // [n_vocab, n_embd], token_embd when tied
  bool tied_ = false;
  PerLayerInputs per_layer_;        // table [n_vocab_per_layer, n_layer * 256]
  std::array<PackedMatrix, kStreams - 1> altup_proj_, altup_unembd_proj_;  // [n_embd, n_embd]
  std::vector<float> output_norm_;  // [n_embd]
  std::vector<Layer> layers_;
};

// The architecture's entry (architecture.h): its configuration rules and its model.
void ConfigureGemma3n(const GgufFile& file, ModelConfig& config);
std::unique_ptr<Model> LoadGemma3n(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

}  // namespace pyengine
