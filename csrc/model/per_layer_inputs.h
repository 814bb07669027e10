// Per-layer inputs, as Gemma 3n and Gemma 4 compute them: each token gets a slice of width P
// per layer from a large embedding table (left mapped: a token reads its one row) mixed with a
// projection of its embedding, and each layer adds a gated projection of its slice.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"
#include "model/batch.h"
#include "model/ops.h"
#include "quant/matmul.h"

namespace pyengine {

class ThreadPool;

struct PerLayerInputs {
  TensorView table;          // [n_vocab_per_layer, n_layer * P], read in place
  PackedMatrix model_proj;   // [n_layer * P, n_embd]
  std::vector<float> norm;   // [P]

  // ws.per_layer [n, n_layer, P] = (RMSNorm(model_proj . x / sqrt(n_embd), norm) + sqrt(P) *
  // the token's table row) / sqrt(2), where x, the scaled token embeddings, is in ws.in. Ids
  // past the table's rows (Gemma 3n's multimodal ids in Ollama's blobs) have a zero row.
  void Compute(const ModelConfig& c, const Batch& batch, Workspace& ws, ThreadPool& pool) const;
};

// One layer's branch: o [n, n_embd] = RMSNorm(proj . (gelu(inp_gate . in) * PL[l]), post_norm),
// with `in` [n, n_embd] and PL = ws.per_layer. Uses ws.small and ws.in.
void PerLayerBranch(const ModelConfig& c, int64_t l, const PackedMatrix& inp_gate,
                    const PackedMatrix& proj, const std::vector<float>& post_norm,
                    const float* in, int64_t n, float* o, Workspace& ws, ThreadPool& pool);

}  // namespace pyengine
