#include "cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/errors.h"
#include "cuda/cuda_backend.h"
#include "model/block_weights.h"
#include "model/ops.h"
#include "model/tensor_table.h"
#include "quant/kernel_set.h"

namespace pyengine {

void DevBlockWeights::Upload(const GgufFile& f, const ModelTensors& t, const ModelConfig& c,
                             int64_t l) {
  using I = TensorId;
  owns_kv = c.kv_layer[l] == l;
  for (auto [id, w] : {std::pair{I::kAttnQ, &attn_q}, {I::kAttnK, &attn_k}, {I::kAttnV, &attn_v},
                       {I::kAttnOutput, &attn_output}, {I::kFfnGate, &ffn_gate},
                       {I::kFfnUp, &ffn_up}, {I::kFfnDown, &ffn_down}}) {
    if (owns_kv || (id != I::kAttnK && id != I::kAttnV)) *w = cuda::Upload(f.path(), t.Get(id, l));
  }
  for (auto [id, v] : {std::pair{I::kAttnNorm, &attn_norm}, {I::kAttnQNorm, &attn_q_norm},
                       {I::kAttnKNorm, &attn_k_norm}, {I::kPostAttentionNorm, &post_attention_norm},
                       {I::kFfnNorm, &ffn_norm}, {I::kPostFfwNorm, &post_ffw_norm}}) {
    *v = cuda::UploadFloats(t.Floats(id, l));
  }
  rope_inv_freq = cuda::UploadFloats(LayerRopeInvFreq(c, l));
}

CudaModel::CudaModel(const GgufFile& f, const ModelConfig& cfg) : cfg_(cfg) {
  const int64_t D = cfg.head_dim;
  if (D % 64 != 0 || D > 256) {
    throw ModelError(f.path() + ": head_dim " + std::to_string(D) +
                     " is not run by the CUDA backend (multiples of 64 up to 256)");
  }
  if (cfg.n_head % cfg.n_head_kv != 0) {
    throw ModelError(f.path() + ": query heads are not a multiple of KV heads");
  }
  PYE_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const char* graphs = std::getenv("PYENGINE_CUDA_GRAPHS");
  use_graphs_ = !(graphs && std::string(graphs) == "0");
  const ModelTensors t(f, cfg, TensorTableOf(cfg.arch));
  const TensorView& out = t.Get(TensorId::kOutput);
  const TensorView& embd = t.Get(TensorId::kTokEmbd);
  tied_ = out.data == nullptr;
  output_ = cuda::Upload(f.path(), tied_ ? embd : out);
  if (!tied_) tok_embd_ = cuda::Upload(f.path(), embd);
  output_norm_ = cuda::UploadFloats(t.Floats(TensorId::kOutputNorm));
  const float* table = GeluFp16Table();
  gelu_table_ = cuda::UploadFloats(std::vector<float>(table, table + (1 << 16)));
}

CudaModel::~CudaModel() {
  ClearGraphs();
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaModel::ReserveInput(int64_t n, int64_t cols) const {
  xr_.Reserve(static_cast<size_t>(n * cols));
  xq_.Reserve(static_cast<size_t>(n * cols));
  xd_.Reserve(static_cast<size_t>(n * cols / 32 + 1));
}

void CudaModel::Project(const cuda::DevWeight& w, const float* x, int64_t n, float* y) const {
  cuda::PrepareInput(w.m.type, x, n, w.m.cols, xr_.get(), xq_.get(), xd_.get(), stream_);
  cuda::MatMul(w.m, xr_.get(), xq_.get(), xd_.get(), n, y, stream_);
}

namespace {

// Whether the matrices can share one prepared input and one launch.
bool OneLaunch(std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy) {
  const cuda::DevMatrix& first = wy.begin()->first->m;
  bool same = wy.size() <= static_cast<size_t>(cuda::kMaxMatSet);
  for (const auto& [w, y] : wy) same = same && w->m.type == first.type && w->m.cols == first.cols;
  return same;
}

}  // namespace

void CudaModel::MatMulSet(std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy,
                          int64_t n) const {
  const cuda::DevMatrix* ws[cuda::kMaxMatSet];
  float* ys[cuda::kMaxMatSet];
  int count = 0;
  for (const auto& [w, y] : wy) ws[count] = &w->m, ys[count++] = y;
  cuda::MatMul(ws, ys, count, xr_.get(), xq_.get(), xd_.get(), n, stream_);
}

void CudaModel::Project(std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy,
                        const float* x, int64_t n) const {
  if (!OneLaunch(wy)) {
    for (const auto& [w, y] : wy) Project(*w, x, n, y);
    return;
  }
  const cuda::DevMatrix& m = wy.begin()->first->m;
  cuda::PrepareInput(m.type, x, n, m.cols, xr_.get(), xq_.get(), xd_.get(), stream_);
  MatMulSet(wy, n);
}

void CudaModel::NormProject(const float* x, const float* norm_w, int64_t n, float* scratch,
                            std::initializer_list<std::pair<const cuda::DevWeight*, float*>> wy)
    const {
  const cuda::DevMatrix& m = wy.begin()->first->m;
  if (!OneLaunch(wy)) {
    cuda::RmsNorm(x, norm_w, n, m.cols, cfg_.rms_eps, scratch, stream_);
    Project(wy, scratch, n);
    return;
  }
  cuda::NormPrepare(m.type, x, norm_w, n, m.cols, cfg_.rms_eps, xr_.get(), xq_.get(), xd_.get(),
                    stream_);
  MatMulSet(wy, n);
}

void CudaModel::ProjectGelu(const cuda::DevWeight& w, const float* g, const float* u, int64_t n,
                            float* y) const {
  cuda::PrepareInput(w.m.type, g, n, w.m.cols, xr_.get(), xq_.get(), xd_.get(), stream_, u,
                     gelu_table_.get());
  cuda::MatMul(w.m, xr_.get(), xq_.get(), xd_.get(), n, y, stream_);
}

void CudaModel::EnqueueEmbed(int64_t n, float* x) const {
  cuda::Embed(tied_ ? output_.m : tok_embd_.m, tokens_.get(), n,
              std::sqrt(static_cast<float>(cfg_.n_embd)), x, stream_);
}

cuda::KvArgs CudaModel::Kv() const {
  return {kv_.get(), seq_.get(), pos_.get(), static_cast<int>(kv_arena_->block_tokens()),
          static_cast<int>(cfg_.kv_dim())};
}

void CudaModel::UploadBatch(const Batch& batch) const {
  const KvView& v0 = batch.views[0];
  const KvArena* arena = v0.arena;
  if (kv_arena_ != arena) {  // first call: the device copy of the arena
    const int64_t page_halves = 2 * arena->block_tokens() * arena->kv_dim();
    kv_ = cuda::DeviceBuffer<__half>(static_cast<size_t>(arena->n_pages() * page_halves));
    kv_arena_ = arena;
  }
  tokens_.Upload(batch.tokens.data(), batch.tokens.size(), stream_);
  pos_.Upload(batch.pos.data(), batch.pos.size(), stream_);
  seq_.Upload(batch.seq.data(), batch.seq.size(), stream_);
  if (!batch.out_rows.empty()) out_rows_.Upload(batch.out_rows.data(), batch.out_rows.size(), stream_);
  if (!batch.hidden_rows.empty()) {
    hidden_rows_.Upload(batch.hidden_rows.data(), batch.hidden_rows.size(), stream_);
  }
  // Per group: every sequence's blocks, each as its pages' arena ids.
  const KvLayout& layout = *v0.layout;
  for (int g = 0; g < layout.n_groups; ++g) {
    std::vector<int32_t>& table = host_table_[g];
    std::vector<int32_t>& off = host_off_[g];
    table.clear();
    off.clear();
    for (const KvView& v : batch.views) {
      off.push_back(static_cast<int32_t>(table.size()));
      for (int32_t b : v.table->blocks[g]) {
        for (int p = 0; p < layout.group_pages[g]; ++p) {
          table.push_back(b >= 0 ? static_cast<int32_t>(arena->page_id(b, p)) : -1);
        }
      }
    }
    if (table.empty()) table.push_back(-1);
    table_[g].Upload(table.data(), table.size(), stream_);
    off_[g].Upload(off.data(), off.size(), stream_);
    groups_[g] = {table_[g].get(), off_[g].get(), layout.group_pages[g]};
  }
  UploadInputs(batch);
  // The copies read host memory the next step rewrites: let them finish.
  PYE_CUDA(cudaStreamSynchronize(stream_));
}

void CudaModel::Reserve(int64_t n, int64_t n_out, int64_t n_hidden, int splits) const {
  const int64_t E = cfg_.n_embd;
  const int64_t tasks = n * cfg_.n_head * splits;
  attn_splits_ = splits;
  attn_stats_.Reserve(static_cast<size_t>(2 * tasks));
  if (splits > 1) attn_partial_.Reserve(static_cast<size_t>(tasks * cfg_.head_dim));
  ReserveInput(std::max<int64_t>(n_out, 1), E);
  ReserveLayers(n);
  rows_.Reserve(static_cast<size_t>(std::max<int64_t>(n_out, 1) * E));
  hrows_.Reserve(static_cast<size_t>(std::max<int64_t>(n_hidden, 1) * E));
  logits_.Reserve(static_cast<size_t>(std::max<int64_t>(n_out, 1) * cfg_.n_vocab));
}

std::vector<const void*> CudaModel::BufferAddresses() const {
  std::vector<const void*> a = {xr_.get(), xd_.get(), xq_.get(), rows_.get(), hrows_.get(),
                                logits_.get(), attn_stats_.get(), attn_partial_.get(),
                                tokens_.get(), pos_.get(), seq_.get(),
                                out_rows_.get(), hidden_rows_.get(), kv_.get()};
  for (int g = 0; g < kMaxKvGroups; ++g) {
    a.push_back(table_[g].get());
    a.push_back(off_[g].get());
  }
  AddAddresses(&a);
  return a;
}

void CudaModel::ClearGraphs() const {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void CudaModel::Enqueue(int64_t n, int64_t n_out, int64_t n_hidden,
                        const KvLayout& layout) const {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd;
  const float* h = EnqueueLayers(n, layout);
  if (n_hidden > 0) {
    cuda::GatherRows(h, hidden_rows_.get(), n_hidden, E, hrows_.get(), stream_);
    cuda::RmsNorm(hrows_.get(), output_norm_.get(), n_hidden, E, c.rms_eps, hrows_.get(),
                  stream_);
  }
  if (n_out > 0) {
    cuda::GatherRows(h, out_rows_.get(), n_out, E, rows_.get(), stream_);
    cuda::RmsNorm(rows_.get(), output_norm_.get(), n_out, E, c.rms_eps, rows_.get(), stream_);
    Project(output_, rows_.get(), n_out, logits_.get());
    if (c.final_softcap > 0) {
      cuda::Softcap(logits_.get(), n_out * c.n_vocab, c.final_softcap, stream_);
    }
  }
}

void CudaModel::Forward(const Batch& batch, float* out, float* hidden) const {
  Step(batch, out, hidden, nullptr);
}

bool CudaModel::ForwardArgmax(const Batch& batch, int32_t* argmax) const {
  Step(batch, nullptr, nullptr, argmax);
  return true;
}

void CudaModel::Step(const Batch& batch, float* out, float* hidden, int32_t* argmax) const {
  const ModelConfig& c = cfg_;
  const int64_t n = batch.size();
  if (n <= 0) return;
  CheckBatch(c, batch);
  const int64_t n_out = out || argmax ? static_cast<int64_t>(batch.out_rows.size()) : 0;
  const int64_t n_hidden = hidden ? static_cast<int64_t>(batch.hidden_rows.size()) : 0;
  UploadBatch(batch);
  const int max_keys = *std::max_element(batch.pos.begin(), batch.pos.end()) + 1;
  const int splits = cuda::AttendSplits(n, static_cast<int>(c.n_head), max_keys);
  Reserve(n, n_out, n_hidden, splits);
  const KvLayout& layout = *batch.views[0].layout;
  // Every step of a batch shape is one CUDA graph, captured the first time and replayed after:
  // the batch's contents (tokens, positions, block tables) live in device buffers whose
  // addresses the graph holds, so a replay computes the new batch. A reallocation changes
  // those addresses and drops the graphs. Large prompt chunks run directly.
  if (use_graphs_ && n <= kMaxGraphTokens) {
    const std::vector<const void*> sig = BufferAddresses();
    if (sig != graph_sig_) {
      ClearGraphs();
      graph_sig_ = sig;
    }
    const std::array<int64_t, 4> key{n, n_out, n_hidden, splits};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= kMaxGraphs) ClearGraphs();
      cudaGraph_t graph = nullptr;
      PYE_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        Enqueue(n, n_out, n_hidden, layout);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      PYE_CUDA(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      PYE_CUDA(e);
      it = graphs_.emplace(key, exec).first;
    }
    PYE_CUDA(cudaGraphLaunch(it->second, stream_));
  } else {
    Enqueue(n, n_out, n_hidden, layout);
  }
  if (n_hidden > 0) {
    PYE_CUDA(cudaMemcpyAsync(hidden, hrows_.get(), n_hidden * c.n_embd * sizeof(float),
                             cudaMemcpyDeviceToHost, stream_));
  }
  if (n_out > 0 && argmax) {
    argmax_.Reserve(static_cast<size_t>(n_out));
    cuda::ArgmaxRows(logits_.get(), n_out, c.n_vocab, argmax_.get(), stream_);
    PYE_CUDA(cudaMemcpyAsync(argmax, argmax_.get(), n_out * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, stream_));
  } else if (n_out > 0) {
    PYE_CUDA(cudaMemcpyAsync(out, logits_.get(), n_out * c.n_vocab * sizeof(float),
                             cudaMemcpyDeviceToHost, stream_));
  }
  PYE_CUDA(cudaStreamSynchronize(stream_));
}

bool CudaAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string CudaDeviceInfo() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(e);
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return "a CUDA device (properties unreadable)";
  return std::string(p.name) + " (compute capability " + std::to_string(p.major) + "." +
         std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

std::unique_ptr<Model> LoadCudaModel(const GgufFile& file, const ModelConfig& config) {
  if (!CudaAvailable()) throw EngineError("CUDA backend: " + CudaDeviceInfo());
  if (config.arch == "gemma3") return MakeCudaGemma3(file, config);
  if (config.arch == "gemma3n") return MakeCudaGemma3n(file, config);
  throw ModelError(file.path() + ": the CUDA backend does not run " + config.arch);
}

}  // namespace pyengine
