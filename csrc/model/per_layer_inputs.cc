#include "model/per_layer_inputs.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"

namespace pyengine {
void PerLayerInputs::Compute(const ModelConfig& c, const Batch& batch, Workspace& ws,
                             ThreadPool& pool) const {
  const int64_t E = c.n_embd, NL = c.n_layer, P = c.n_embd_per_layer, n = batch.size();
  Grow(ws.per_layer, n * NL * P);
  Grow(ws.per_layer_emb, n * NL * P);
  float* PL = ws.per_layer.data();
  MatMul(model_proj, ws.in, PL, pool);
  const float proj_scale = 1.f / std::sqrt(static_cast<float>(E));
  const float emb_scale = std::sqrt(static_cast<float>(P));
  const float half = 1.f / std::sqrt(2.f);
  ParallelRanges(pool, n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* pl = PL + t * NL * P;
      float* row = ws.per_layer_emb.data() + t * NL * P;
      for (int64_t i = 0; i < NL * P; ++i) pl[i] *= proj_scale;
      RmsNorm(pl, norm.data(), NL, P, c.rms_eps, pl);
      const int32_t tok = batch.tokens[t];
      if (tok < table.rows()) {
        DequantizeRow(table.type, table.row(tok), row, NL * P);
      } else {
        std::fill_n(row, NL * P, 0.f);
      }
      for (int64_t i = 0; i < NL * P; ++i) pl[i] = (pl[i] + row[i] * emb_scale) * half;
    }
  });
}

void PerLayerBranch(const ModelConfig& c, int64_t l, const PackedMatrix& inp_gate,
                    const PackedMatrix& proj, const std::vector<float>& post_norm,
                    const float* in, int64_t n, float* o, Workspace& ws, ThreadPool& pool) {
  const int64_t E = c.n_embd, NL = c.n_layer, P = c.n_embd_per_layer;
  const KernelSet& kernels = ActiveKernels();
  Grow(ws.small, n * std::max<int64_t>(P, 64));
  Grow(ws.ones, P);
  std::fill_n(ws.ones.data(), P, 1.f);
  ws.in.Set(in, n, E);
  MatMul(inp_gate, ws.in, ws.small.data(), pool);
  for (int64_t t = 0; t < n; ++t) {
    float* g = ws.small.data() + t * P;
    kernels.gelu_mul(g, ws.ones.data(), P);  // gelu alone: gelu(g) * 1
    const float* pl = ws.per_layer.data() + (t * NL + l) * P;
    for (int64_t i = 0; i < P; ++i) g[i] *= pl[i];
  }
  ws.in.Set(ws.small.data(), n, P);
  MatMul(proj, ws.in, o, pool);
  NormRows(o, post_norm.data(), n, E, c.rms_eps, o, pool);
}

}  // namespace pyengine
