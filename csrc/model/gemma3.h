// Gemma3Model: the Gemma 3 text model's weights and forward pass, as llama.cpp computes it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"
#include "model/block_weights.h"
#include "model/model.h"
#include "model/ops.h"
#include "quant/matmul.h"

namespace pyengine {

class Gemma3Model : public Model {
 public:
  // Binds the tensors of `file` (kept mapped by the caller) and checks their shapes and types;
  // repacks what the kernels want repacked (on `pool`) and lets the file's copy of those pages
  // go. Throws ModelError / GgufError naming the offending tensor.
  Gemma3Model(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

  const ModelConfig& config() const override { return cfg_; }
  void Forward(const Batch& batch, float* out, float* hidden = nullptr) const override {
    Run(batch, ws_, out, pool_, hidden);
  }

 private:
  void Run(const Batch& batch, Workspace& ws, float* out, ThreadPool& pool, float* hidden) const;

  using Layer = BlockWeights;

  ModelConfig cfg_;
  ThreadPool& pool_;           // the forward pass's threads (the packing's too)
  mutable Workspace ws_;       // one forward pass at a time (Model::Forward)
  std::unique_ptr<WeightArena> arena_;  // every packed matrix below lives here
  TensorView tok_embd_;   // [n_vocab, n_embd] rows looked up per token
  PackedMatrix output_;   // [n_vocab, n_embd], token_embd when tied
  bool tied_ = false;     // output_ is token_embd
  std::vector<float> output_norm_;  // [n_embd]
  std::vector<Layer> layers_;
};

// The architecture's entry (architecture.h): its configuration rules and its model.
void ConfigureGemma3(const GgufFile& file, ModelConfig& config);
std::unique_ptr<Model> LoadGemma3(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);

// Whether a gemma3 file was written by Ollama's own converter (a published Ollama blob) rather
// than llama.cpp's: it carries the vision tower (v.*, mm.* tensors, gemma3.mm.* key), the
// nested rope key names, Ollama's extra tokenizer flags, or no rms epsilon key. These are the
// markers Ollama's own load-time patch for llama.cpp keys on; the metadata such a file leaves
// out is then filled in as that patch does.
bool IsOllamaGemma3(const GgufFile& file);

}  // namespace pyengine
