// Each CUDA kernel against its CPU counterpart on random inputs, so a device run names the
// kernel at fault before any model is involved. Shapes are ragged on purpose: rows not a
// multiple of the 8 rows a block computes, rows of 160 values (not a multiple of the 128 a warp
// reads per step), token counts that leave partial tiles.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "cuda/cuda_backend.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/weights.h"
#include "kv/block_table.h"
#include "model/model.h"
#include "model/ops.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "model/batch.h"
#include "runtime/sampler.h"
#include "core/thread_pool.h"

namespace pyengine {
namespace {

using cuda::DeviceBuffer;

template <typename T>
std::vector<T> Download(const T* d, size_t n) {
  std::vector<T> h(n);
  PYE_CUDA(cudaDeviceSynchronize());
  PYE_CUDA(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Largest relative L2 error over rows of `dim` values.
double RowError(const std::vector<float>& got, const std::vector<float>& want, int64_t dim) {
  double worst = 0;
  for (size_t r = 0; r * dim < want.size(); ++r) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < dim; ++i) {
      const double d = got[r * dim + i] - want[r * dim + i];
      num += d * d;
      den += static_cast<double>(want[r * dim + i]) * want[r * dim + i];
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
  }
  return worst;
}

// x as the CPU quantizes activations to Q8_0 (bit-identical to llama.cpp), dequantized.
void QuantizeRef(const float* x, int64_t n, float* out) {
  std::vector<XQ8Block> blocks(static_cast<size_t>(n / 32));
  ActiveKernels().quantize_q8(x, n, blocks.data());
  for (int64_t b = 0; b < n / 32; ++b) {
    for (int i = 0; i < 32; ++i) out[b * 32 + i] = blocks[b].d * blocks[b].q[i];
  }
}

double CheckMatMul(GgmlType type, int64_t n, std::mt19937& rng) {
  const int64_t rows = 67, cols = 160;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> wf(rows * cols), x(n * cols);
  for (float& v : wf) v = nd(rng) * 0.1f;
  for (float& v : x) v = nd(rng);
  std::vector<uint8_t> raw;
  std::vector<float> wd(rows * cols);  // the weights as stored, dequantized
  if (type == GgmlType::kQ8_0) {
    raw.resize(rows * cols / 32 * sizeof(BlockQ8_0));
    BlockQ8_0* blocks = reinterpret_cast<BlockQ8_0*>(raw.data());
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(wf[b * 32 + i]));
      const float d = amax / 127.f;
      blocks[b].d = Fp32ToFp16(d);
      for (int i = 0; i < 32; ++i) {
        blocks[b].qs[i] = static_cast<int8_t>(std::round(wf[b * 32 + i] / d));
        wd[b * 32 + i] = Fp16ToFp32(blocks[b].d) * blocks[b].qs[i];
      }
    }
  } else if (type == GgmlType::kF32) {
    raw.resize(wf.size() * 4);
    std::memcpy(raw.data(), wf.data(), raw.size());
    wd = wf;
  } else {
    raw.resize(wf.size() * 2);
    uint16_t* h = reinterpret_cast<uint16_t*>(raw.data());
    for (size_t i = 0; i < wf.size(); ++i) {
      h[i] = type == GgmlType::kF16 ? Fp32ToFp16(wf[i]) : Fp32ToBf16(wf[i]);
      wd[i] = type == GgmlType::kF16 ? Fp16ToFp32(h[i]) : Bf16ToFp32(h[i]);
    }
  }
  TensorView t;
  t.name = "selftest";
  t.type = type;
  t.n_dims = 2;
  t.ne[0] = cols;
  t.ne[1] = rows;
  t.data = raw.data();
  t.nbytes = raw.size();
  cuda::DevWeight w = cuda::Upload("selftest", t);
  // The reference: activations rounded as the kernels round them, products in double.
  std::vector<float> xa(x.size());
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x.data() + r * cols;
    float* ar = xa.data() + r * cols;
    if (type == GgmlType::kQ8_0) {
      QuantizeRef(xr, cols, ar);
    } else {
      for (int64_t i = 0; i < cols; ++i) {
        ar[i] = type == GgmlType::kF16 ? Fp16ToFp32(Fp32ToFp16(xr[i]))
                : type == GgmlType::kBF16 ? Bf16ToFp32(Fp32ToBf16(xr[i])) : xr[i];
      }
    }
  }
  std::vector<float> want(n * rows);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < rows; ++o) {
      double s = 0;
      for (int64_t i = 0; i < cols; ++i) s += static_cast<double>(wd[o * cols + i]) * xa[r * cols + i];
      want[r * rows + o] = static_cast<float>(s);
    }
  }
  DeviceBuffer<float> dx, xr, xd, y(n * rows);
  DeviceBuffer<int8_t> xq(n * cols);
  dx.Upload(x.data(), x.size(), nullptr);
  xr.Reserve(n * cols);
  xd.Reserve(n * cols / 32);
  cuda::PrepareInput(w.m.type, dx.get(), n, cols, xr.get(), xq.get(), xd.get(), nullptr);
  cuda::MatMul(w.m, xr.get(), xq.get(), xd.get(), n, y.get(), nullptr);
  double err = RowError(Download(y.get(), n * rows), want, rows);
  // The same rows as a set of three matrices (rows 0-29, 30-37, 38-66) in one launch.
  const int64_t cut[] = {0, 30, 38, rows};
  const size_t elem = type == GgmlType::kF32 ? 4 : type == GgmlType::kQ8_0 ? 1 : 2;
  cuda::DevMatrix parts[3];
  DeviceBuffer<float> ys[3];
  const cuda::DevMatrix* ws[3];
  float* yp[3];
  for (int i = 0; i < 3; ++i) {
    parts[i] = w.m;
    parts[i].rows = cut[i + 1] - cut[i];
    parts[i].w = static_cast<const uint8_t*>(w.m.w) + cut[i] * cols * elem;
    if (w.m.d) parts[i].d = w.m.d + cut[i] * (cols / 32);
    ys[i].Reserve(static_cast<size_t>(n * parts[i].rows));
    ws[i] = &parts[i];
    yp[i] = ys[i].get();
  }
  cuda::MatMul(ws, yp, 3, xr.get(), xq.get(), xd.get(), n, nullptr);
  std::vector<float> got(n * rows);
  for (int i = 0; i < 3; ++i) {
    const std::vector<float> part = Download(ys[i].get(), n * parts[i].rows);
    for (int64_t t = 0; t < n; ++t) {
      std::copy(part.begin() + t * parts[i].rows, part.begin() + (t + 1) * parts[i].rows,
                got.begin() + t * rows + cut[i]);
    }
  }
  return std::max(err, RowError(got, want, rows));
}

// Rows that test the greedy rule: random, a tie (the first wins), NaN at the top (never
// wins), all -inf (0), all NaN (0), the best in the last column. Returns the share of rows
// whose device argmax differs from the CPU sampler's.
double CheckArgmax(std::mt19937& rng) {
  const int64_t n = 6, cols = 3000;  // not a multiple of the 256 threads a row gets
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(n * cols);
  for (float& v : x) v = nd(rng);
  x[1 * cols + 700] = x[1 * cols + 2900] = 50.f;
  x[2 * cols + 5] = std::nanf(""), x[2 * cols + 9] = 40.f;
  std::fill(x.begin() + 3 * cols, x.begin() + 4 * cols, -INFINITY);
  std::fill(x.begin() + 4 * cols, x.begin() + 5 * cols, std::nanf(""));
  x[5 * cols + cols - 1] = 60.f;
  DeviceBuffer<float> dx;
  DeviceBuffer<int32_t> out(n);
  dx.Upload(x.data(), x.size(), nullptr);
  cuda::ArgmaxRows(dx.get(), n, cols, out.get(), nullptr);
  const std::vector<int32_t> got = Download(out.get(), n);
  SamplingParams greedy;
  greedy.temperature = 0.f;
  Sampler sampler(greedy);
  int wrong = 0;
  for (int64_t r = 0; r < n; ++r) wrong += got[r] != sampler.Sample(x.data() + r * cols, cols, {});
  return static_cast<double>(wrong) / n;
}

double CheckRmsNormGelu(std::mt19937& rng, double* gelu_err) {
  const int64_t n = 5, dim = 160;
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> x(n * dim), w(dim), u(n * dim);
  for (float& v : x) v = nd(rng);
  for (float& v : w) v = nd(rng);
  for (float& v : u) v = nd(rng);
  std::vector<float> want(n * dim);
  RmsNorm(x.data(), w.data(), n, dim, 1e-6f, want.data());
  DeviceBuffer<float> dx, dw, du, out(n * dim), table;
  dx.Upload(x.data(), x.size(), nullptr);
  dw.Upload(w.data(), w.size(), nullptr);
  du.Upload(u.data(), u.size(), nullptr);
  cuda::RmsNorm(dx.get(), dw.get(), n, dim, 1e-6f, out.get(), nullptr);
  double norm_err = RowError(Download(out.get(), n * dim), want, dim);
  // Normed straight into a matrix input: as floats, and as Q8_0 blocks (dequantized here,
  // against the CPU's quantization of the device's normed floats: the quantization itself is
  // held to exactness, apart from the norm's last bits).
  DeviceBuffer<float> xr(n * dim), xd(n * dim / 32);
  DeviceBuffer<int8_t> xq(n * dim);
  cuda::NormPrepare(cuda::WType::kF32, dx.get(), dw.get(), n, dim, 1e-6f, xr.get(), xq.get(),
                    xd.get(), nullptr);
  const std::vector<float> normed = Download(xr.get(), n * dim);
  norm_err = std::max(norm_err, RowError(normed, want, dim));
  cuda::NormPrepare(cuda::WType::kQ8_0, dx.get(), dw.get(), n, dim, 1e-6f, xr.get(), xq.get(),
                    xd.get(), nullptr);
  const std::vector<int8_t> q = Download(xq.get(), n * dim);
  const std::vector<float> d = Download(xd.get(), n * dim / 32);
  std::vector<float> deq(n * dim), want_q(n * dim);
  for (int64_t i = 0; i < n * dim; ++i) deq[i] = d[i / 32] * q[i];
  for (int64_t r = 0; r < n; ++r) QuantizeRef(normed.data() + r * dim, dim, want_q.data() + r * dim);
  norm_err = std::max(norm_err, RowError(deq, want_q, dim));
  const float* t = GeluFp16Table();
  table.Upload(t, 1 << 16, nullptr);
  std::vector<float> g = x;
  ActiveKernels().gelu_mul(g.data(), u.data(), n * dim);
  // Fused into a matrix input, then alone (in place).
  cuda::PrepareInput(cuda::WType::kF32, dx.get(), n, dim, xr.get(), xq.get(), xd.get(), nullptr,
                     du.get(), table.get());
  *gelu_err = RowError(Download(xr.get(), n * dim), g, dim);
  cuda::GeluMul(dx.get(), du.get(), table.get(), n * dim, nullptr);
  *gelu_err = std::max(*gelu_err, RowError(Download(dx.get(), n * dim), g, dim));
  return norm_err;
}

// q/k/v preparation and attention for two sequences read from paged KV, against ops.cc.
double CheckAttention(bool sliding, double* kv_err) {
  ModelConfig c;
  c.arch = "gemma3";
  c.n_vocab = 8;
  c.n_layer = 1;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 64;
  c.sliding_window = 8;
  c.attn_scale = 0.125f;
  c.layer_is_swa = {static_cast<uint8_t>(sliding)};
  const int64_t D = c.head_dim, QD = c.q_dim(), KVD = c.kv_dim(), bt = 16;
  KvArena arena(KvType::kF16, KVD, bt, 64, 1, 1);
  KvLayout layout;
  layout.n_groups = 1;
  layout.group_of_layer = {0};
  layout.page_of_layer = {0};
  layout.group_pages[0] = 1;
  const int64_t lens[2] = {37, 21};
  BlockTable tables[2];
  Batch batch;
  for (int s = 0; s < 2; ++s) {
    for (int64_t b = 0; b * bt < lens[s]; ++b) tables[s].blocks[0].push_back(arena.Allocate(1));
    batch.views.push_back(KvView{&arena, &layout, &tables[s]});
    std::vector<int32_t> ids(static_cast<size_t>(lens[s]), 1);
    batch.Add(s, ids.data(), lens[s], 0, false, false);
  }
  const int64_t n = batch.size();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  Workspace ws;
  ThreadPool pool(1);
  PrepareBatch(c, batch, ws, pool);
  for (int64_t i = 0; i < n * QD; ++i) ws.q[i] = nd(rng);
  for (int64_t i = 0; i < n * KVD; ++i) ws.k[i] = nd(rng), ws.v[i] = nd(rng);
  std::vector<float> qn(D), kn(D);
  for (float& v : qn) v = 1.f + 0.1f * nd(rng);
  for (float& v : kn) v = 1.f + 0.1f * nd(rng);
  const std::vector<float> inv = RopeInvFreq(D, 10000.f, 1.f);
  const std::vector<float> q0(ws.q.begin(), ws.q.begin() + n * QD);  // before the CPU's in-place steps
  DeviceBuffer<float> dq, dk, dv, dqn, dkn, dinv, dattn(n * QD);
  dq.Upload(q0.data(), q0.size(), nullptr);
  dk.Upload(ws.k.data(), n * KVD, nullptr);
  dv.Upload(ws.v.data(), n * KVD, nullptr);
  dqn.Upload(qn.data(), D, nullptr);
  dkn.Upload(kn.data(), D, nullptr);
  dinv.Upload(inv.data(), inv.size(), nullptr);
  PYE_CUDA(cudaDeviceSynchronize());  // the uploads have read ws.k and ws.v
  PrepareQkv(c, 0, batch, ws, qn.data(), kn.data(), inv.data(), true, false, pool);
  Attend(c, 0, batch, ws, pool);

  // The device side: the same page ids in a device arena.
  const int64_t page_halves = 2 * bt * KVD;
  DeviceBuffer<__half> kv(static_cast<size_t>(arena.n_pages() * page_halves));
  PYE_CUDA(cudaMemset(kv.get(), 0, kv.size() * sizeof(__half)));
  std::vector<int32_t> table, off;
  for (int s = 0; s < 2; ++s) {
    off.push_back(static_cast<int32_t>(table.size()));
    for (int32_t b : tables[s].blocks[0]) table.push_back(static_cast<int32_t>(arena.page_id(b, 0)));
  }
  DeviceBuffer<int32_t> dtable, doff, dseq, dpos;
  dtable.Upload(table.data(), table.size(), nullptr);
  doff.Upload(off.data(), off.size(), nullptr);
  dseq.Upload(batch.seq.data(), n, nullptr);
  dpos.Upload(batch.pos.data(), n, nullptr);
  const cuda::KvArgs args{kv.get(), dseq.get(), dpos.get(), static_cast<int>(bt), static_cast<int>(KVD)};
  const cuda::KvGroup group{dtable.get(), doff.get(), 1};
  cuda::PrepareQkv(dq.get(), dk.get(), dv.get(), n, 4, 2, static_cast<int>(D), dqn.get(),
                   dkn.get(), dinv.get(), c.attn_scale, c.rms_eps, true, false, args, group, 0,
                   nullptr);
  // One warp per (token, head), and the keys split 5 ways (uneven shares, empty splits).
  const std::vector<float> want(ws.attn.begin(), ws.attn.begin() + n * QD);
  double attn_err = 0;
  for (int splits : {1, 5}) {
    DeviceBuffer<float> stats(static_cast<size_t>(2 * n * 4 * splits));
    DeviceBuffer<float> partial(static_cast<size_t>(n * 4 * splits * D));
    cuda::Attend(dq.get(), dattn.get(), n, 4, 2, static_cast<int>(D),
                 sliding ? static_cast<int>(c.sliding_window) : 0, args, group, 0,
                 {stats.get(), partial.get(), splits}, nullptr);
    attn_err = std::max(attn_err, RowError(Download(dattn.get(), n * QD), want, D));
  }
  // Keys and values as stored: every written slot of both sequences.
  const std::vector<uint16_t> dev =
      Download(reinterpret_cast<const uint16_t*>(kv.get()), kv.size());
  double worst = 0;
  for (int64_t t = 0; t < n; ++t) {
    const KvView& v = batch.views[batch.seq[t]];
    for (int value = 0; value < 2; ++value) {
      const uint16_t* host = reinterpret_cast<const uint16_t*>(value ? v.v(0, batch.pos[t])
                                                                     : v.k(0, batch.pos[t]));
      const int32_t page = static_cast<int32_t>(
          arena.page_id(v.table->blocks[0][batch.pos[t] / bt], 0));
      const uint16_t* d = dev.data() + page * page_halves + (value ? bt * KVD : 0) +
                          (batch.pos[t] % bt) * KVD;
      for (int64_t i = 0; i < KVD; ++i) {
        worst = std::max<double>(worst, std::fabs(Fp16ToFp32(host[i]) - Fp16ToFp32(d[i])));
      }
    }
  }
  *kv_err = worst;
  return attn_err;
}

}  // namespace

std::vector<std::pair<std::string, double>> CudaSelfTest() {
  if (!CudaAvailable()) throw EngineError("CUDA backend: " + CudaDeviceInfo());
  std::vector<std::pair<std::string, double>> out;
  std::mt19937 rng(1);
  const std::pair<GgmlType, const char*> types[] = {{GgmlType::kF32, "f32"}, {GgmlType::kF16, "f16"},
                                                    {GgmlType::kBF16, "bf16"}, {GgmlType::kQ8_0, "q8_0"}};
  for (const auto& [type, name] : types) {
    for (int64_t n : {1, 5, 37}) {  // one token, a register tile, shared-memory tiles
      out.emplace_back(std::string("matmul_") + name + "_n" + std::to_string(n), CheckMatMul(type, n, rng));
    }
  }
  out.emplace_back("argmax", CheckArgmax(rng));
  double gelu = 0, kv = 0;
  out.emplace_back("rms_norm", CheckRmsNormGelu(rng, &gelu));
  out.emplace_back("gelu_mul", gelu);
  for (bool sliding : {false, true}) {
    const std::string kind = sliding ? "_window" : "_global";
    out.emplace_back("attention" + kind, CheckAttention(sliding, &kv));
    out.emplace_back("kv_write" + kind, kv);
  }
  return out;
}

}  // namespace pyengine
