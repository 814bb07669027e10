// CudaModel: what the CUDA models share. One step: the batch's metadata (tokens, positions,
// block tables as page ids of the host arena) is uploaded, the model's kernels run (as a
// captured CUDA graph for small steps), and the wanted logits and hidden states come back.
// A model supplies its weights, its layers (EnqueueLayers) and the scratch they need.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <initializer_list>
#include <map>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/gguf.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/weights.h"
#include "model/model.h"

namespace pyengine {

class ModelTensors;

// The device copy of one Gemma 3 decoder layer's weights (model/block_weights.h), which the
// Gemma 3n model keeps as they are.
struct DevBlockWeights {
  cuda::DevWeight attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down;
  cuda::DeviceBuffer<float> attn_norm, attn_q_norm, attn_k_norm, post_attention_norm;
  cuda::DeviceBuffer<float> ffn_norm, post_ffw_norm, rope_inv_freq;
  bool owns_kv = true;  // false: reads an earlier layer's KV; attn_k / attn_v stay empty

  void Upload(const GgufFile& f, const ModelTensors& t, const ModelConfig& c, int64_t l);
};

class CudaModel : public Model {
 public:
  ~CudaModel() override;
  const ModelConfig& config() const override { return cfg_; }
  void Forward(const Batch& batch, float* out, float* hidden) const final;
  bool ForwardArgmax(const Batch& batch, int32_t* argmax) const final;

 protected:
  // Binds and uploads what every Gemma shares: embeddings / output, final norm, GELU table.
  CudaModel(const GgufFile& f, const ModelConfig& cfg);

  // Grows the model's own scratch for n tokens (called before a capture: nothing may grow then).
  virtual void ReserveLayers(int64_t n) const = 0;
  // Uploads per-step inputs of the model's own (Gemma 3n: per-layer token rows).
  virtual void UploadInputs(const Batch& batch) const {}
  // The model's kernels from the embedding to the final hidden state [n, n_embd], which it
  // returns (a device buffer of its scratch).
  virtual const float* EnqueueLayers(int64_t n, const KvLayout& layout) const = 0;
  // Device addresses of the model's scratch (a changed address invalidates captured graphs).
  virtual void AddAddresses(std::vector<const void*>* a) const {}

  // y [n, rows] = x [n, cols] . W^T, x prepared for W's storage first.
  void Project(const cuda::DevWeight& w, const float* x, int64_t n, float* y) const;
  // Several products of one input (q, k, v; gate, up): the input prepared once, and the
  // matrices in one launch when they share a type and width.
  void Project(std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy,
               const float* x, int64_t n) const;
  // The same of RMSNorm(x) with weight norm_w, normed straight into the prepared input
  // (scratch [n, cols] holds the normed rows only when the matrices cannot share it).
  void NormProject(const float* x, const float* norm_w, int64_t n, float* scratch,
                   std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy) const;
  // y = (gelu(g) * u) . W^T, the FFN's product made while preparing W's input.
  void ProjectGelu(const cuda::DevWeight& w, const float* g, const float* u, int64_t n,
                   float* y) const;
  // Makes the prepared-input buffers hold n rows of cols values.
  void ReserveInput(int64_t n, int64_t cols) const;
  // x [n, n_embd] = the tokens' embedding rows times sqrt(n_embd).
  void EnqueueEmbed(int64_t n, float* x) const;
  cuda::KvArgs Kv() const;
  // Attend's scratch and split count for this step.
  cuda::AttendScratch AttnScratch() const {
    return {attn_stats_.get(), attn_partial_.get(), attn_splits_};
  }

  ModelConfig cfg_;
  cuda::DevWeight tok_embd_, output_;
  bool tied_ = false;
  cuda::DeviceBuffer<float> output_norm_, gelu_table_;
  cudaStream_t stream_ = nullptr;
  mutable cuda::KvGroup groups_[kMaxKvGroups];
  // The batch on the device.
  mutable cuda::DeviceBuffer<int32_t> tokens_, pos_, seq_, out_rows_, hidden_rows_;

 private:
  static constexpr int64_t kMaxGraphTokens = 64;  // steps up to this size run as CUDA graphs
  static constexpr size_t kMaxGraphs = 64;         // distinct batch shapes kept

  // One step: logits to out, hidden states to hidden, or (argmax set) only the logit rows'
  // argmax ids to argmax.
  void Step(const Batch& batch, float* out, float* hidden, int32_t* argmax) const;
  void UploadBatch(const Batch& batch) const;
  // The matrices on the prepared input (xr_, xq_, xd_), in one launch.
  void MatMulSet(std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy,
                 int64_t n) const;
  void Reserve(int64_t n, int64_t n_out, int64_t n_hidden, int splits) const;
  void Enqueue(int64_t n, int64_t n_out, int64_t n_hidden, const KvLayout& layout) const;
  std::vector<const void*> BufferAddresses() const;
  void ClearGraphs() const;

  mutable cuda::DeviceBuffer<float> xr_, xd_, rows_, hrows_, logits_, attn_stats_, attn_partial_;
  mutable int attn_splits_ = 1;
  mutable cuda::DeviceBuffer<int8_t> xq_;
  mutable cuda::DeviceBuffer<int32_t> argmax_;
  mutable cuda::DeviceBuffer<int32_t> table_[kMaxKvGroups], off_[kMaxKvGroups];
  mutable std::vector<int32_t> host_table_[kMaxKvGroups], host_off_[kMaxKvGroups];  // their sources
  mutable cuda::DeviceBuffer<__half> kv_;  // [arena pages, 2, block_tokens, kv_dim]
  mutable const KvArena* kv_arena_ = nullptr;
  // Captured steps by (tokens, logit rows, hidden rows, attention splits), valid while the
  // buffers' addresses equal graph_sig_. PYENGINE_CUDA_GRAPHS=0 turns them off (every step
  // launched directly).
  bool use_graphs_ = true;
  mutable std::map<std::array<int64_t, 4>, cudaGraphExec_t> graphs_;
  mutable std::vector<const void*> graph_sig_;
};

std::unique_ptr<Model> MakeCudaGemma3(const GgufFile& f, const ModelConfig& cfg);
std::unique_ptr<Model> MakeCudaGemma3n(const GgufFile& f, const ModelConfig& cfg);

}  // namespace pyengine
