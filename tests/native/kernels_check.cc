// The kernel levels of this build without Python, for a CPU the tests' interpreter cannot run on
// (an AArch64 build under qemu-aarch64: scripts/arm_check.sh).
//
//   kernels_check kernels        every level this CPU has against exact arithmetic and the
//                                scalar reference: each weight type's products (the bounds of
//                                test_kernels.py and test_lane_kernels.py), activation
//                                quantization, fp16 conversions, GELU and the attention tiles
//   kernels_check generate MODEL N ID...
//                                greedy tokens of the prompt ids, one line, at the active level
//
// Prints one line per check; exits 1 when any fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "quant/blocks.h"
#include "quant/cpu_features.h"
#include "quant/formats.h"
#include "quant/kernel_set.h"
#include "quant/kv_quantize.h"
#include "quant/matmul.h"
#include "runtime/engine.h"

namespace pyengine {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

struct WeightType {
  GgmlType type;
  std::vector<int> half_fields;  // where a block keeps its fp16 scales (set to sane values)
};

// Every type the engine computes. Quantized blocks are random bytes (every bit pattern) with
// scales of sane size, some negative, as test_lane_kernels.py writes them.
const std::vector<WeightType>& Types() {
  static const std::vector<WeightType> types = {
      {GgmlType::kF32, {}},      {GgmlType::kF16, {}},      {GgmlType::kBF16, {}},
      {GgmlType::kQ8_0, {0}},    {GgmlType::kQ4_0, {0}},    {GgmlType::kQ4_1, {0, 2}},
      {GgmlType::kQ5_0, {0}},    {GgmlType::kQ5_1, {0, 2}}, {GgmlType::kIQ4_NL, {0}},
      {GgmlType::kQ2_K, {80, 82}}, {GgmlType::kQ3_K, {108}}, {GgmlType::kQ4_K, {0, 2}},
      {GgmlType::kQ5_K, {0, 2}}, {GgmlType::kQ6_K, {208}},  {GgmlType::kIQ4_XS, {0}},
  };
  return types;
}

std::vector<uint8_t> RandomWeights(const WeightType& wt, int64_t rows, int64_t cols, std::mt19937& rng) {
  const TypeTraits* tr = GetTypeTraits(static_cast<uint32_t>(wt.type));
  const int64_t blocks = rows * cols / tr->block_size;
  std::vector<uint8_t> raw(static_cast<size_t>(blocks * tr->type_size));
  std::uniform_real_distribution<float> unit(-1.f, 1.f), scale(0.5f, 2.0f), coin(0.f, 1.f);
  if (wt.type == GgmlType::kF32) {
    for (int64_t i = 0; i < blocks; ++i) {
      const float v = unit(rng);
      std::memcpy(raw.data() + 4 * i, &v, 4);
    }
    return raw;
  }
  if (wt.type == GgmlType::kF16 || wt.type == GgmlType::kBF16) {
    for (int64_t i = 0; i < blocks; ++i) {
      const uint16_t h = wt.type == GgmlType::kF16 ? Fp32ToFp16(unit(rng)) : Fp32ToBf16(unit(rng));
      std::memcpy(raw.data() + 2 * i, &h, 2);
    }
    return raw;
  }
  for (uint8_t& b : raw) b = static_cast<uint8_t>(rng());
  for (int64_t i = 0; i < blocks; ++i) {
    for (int off : wt.half_fields) {
      const float s = scale(rng) * 1e-2f * (coin(rng) < 0.3f ? -1.f : 1.f);
      const uint16_t h = Fp32ToFp16(s);
      std::memcpy(raw.data() + i * tr->type_size + off, &h, 2);
    }
  }
  return raw;
}

// The activations as the kernels see them: Q8_0-rounded (quantized types), fp16- or
// bf16-rounded, or as they are (F32).
std::vector<double> SeenActivations(GgmlType type, const std::vector<float>& x, int64_t n, int64_t cols) {
  std::vector<double> out(x.size());
  if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
    for (size_t i = 0; i < x.size(); ++i) {
      out[i] = type == GgmlType::kF16   ? Fp16ToFp32(Fp32ToFp16(x[i]))
               : type == GgmlType::kBF16 ? Bf16ToFp32(Fp32ToBf16(x[i]))
                                         : x[i];
    }
    return out;
  }
  std::vector<XQ8Block> q(static_cast<size_t>(n * cols / 32));
  for (int64_t t = 0; t < n; ++t) ScalarKernels().quantize_q8(x.data() + t * cols, cols, q.data() + t * cols / 32);
  for (size_t b = 0; b < q.size(); ++b)
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = static_cast<double>(q[b].q[j]) * q[b].d;
  return out;
}

// y = W x at the given level, n tokens.
std::vector<float> Product(const PackedMatrix& w, const std::vector<float>& x, int64_t n, IsaLevel level,
                           ThreadPool& pool) {
  SetIsa(level);
  std::vector<float> y(static_cast<size_t>(n * w.rows()));
  MatMul(w, x.data(), n, y.data(), pool);
  return y;
}

void CheckProducts(IsaLevel level, ThreadPool& pool) {
  // Ragged: rows that leave a partial group of 16, token counts that leave partial tiles.
  const int64_t shapes[][3] = {{1, 1, 1}, {17, 2, 3}, {33, 1, 8}, {48, 1, 13}, {7, 2, 9}};
  for (const WeightType& wt : Types()) {
    double worst = 0, worst_ref = 0;
    bool ok = true;
    for (const auto& sh : shapes) {
      const int64_t rows = sh[0], cols = sh[1] * 256, n = sh[2];
      std::mt19937 rng(static_cast<uint32_t>(rows * 100 + cols + static_cast<int>(wt.type)));
      std::vector<uint8_t> raw = RandomWeights(wt, rows, cols, rng);
      TensorView tv;
      tv.name = "w";
      tv.type = wt.type;
      tv.n_dims = 2;
      tv.ne[0] = cols;
      tv.ne[1] = rows;
      tv.data = raw.data();
      tv.nbytes = raw.size();
      PackedMatrix w(tv, pool);
      std::vector<float> x(static_cast<size_t>(n * cols));
      std::normal_distribution<float> normal(0.f, 1.f);
      for (float& v : x) v = normal(rng);
      for (int64_t t = 0; t < n; ++t) x[t * cols + 5] *= 40;  // an outlier sets a block's scale
      const std::vector<double> xs = SeenActivations(wt.type, x, n, cols);
      std::vector<double> wd(static_cast<size_t>(rows * cols));
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(wt.type, tv.row(r), row.data(), cols);
        for (int64_t k = 0; k < cols; ++k) wd[r * cols + k] = row[k];
      }
      const std::vector<float> got = Product(w, x, n, level, pool);
      const std::vector<float> ref = Product(w, x, n, IsaLevel::kScalar, pool);
      // Integer dot products are exact; the float scales and summation order round in float32.
      const bool is_float = wt.type == GgmlType::kF32 || wt.type == GgmlType::kF16 || wt.type == GgmlType::kBF16;
      const double rel = is_float ? 1e-5 : 2e-6;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          double exact = 0, scale = 0;
          for (int64_t k = 0; k < cols; ++k) {
            exact += xs[t * cols + k] * wd[r * cols + k];
            scale += std::fabs(xs[t * cols + k] * wd[r * cols + k]);
          }
          const double g = got[t * rows + r], e = std::fabs(g - exact), er = std::fabs(g - ref[t * rows + r]);
          const double bound = rel * scale + 1e-6;
          if (!(e <= bound) || !(er <= bound)) ok = false;
          worst = std::max(worst, e / (scale + 1e-30));
          worst_ref = std::max(worst_ref, er / (scale + 1e-30));
        }
      }
    }
    char msg[200];
    std::snprintf(msg, sizeof(msg), "%s %s product: worst |got - exact| / scale %.2e, vs scalar %.2e",
                  IsaName(level), TypeName(wt.type), worst, worst_ref);
    Check(ok, msg);
  }
}

// The element-wise and attention kernels against the scalar set.
void CheckOthers(const KernelSet& k) {
  const KernelSet& s = ScalarKernels();
  const std::string lv = IsaName(k.level);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 3.f);
  const int64_t n = 1000;
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  x[3] = 0.5f * (Fp16ToFp32(0x3c00) + Fp16ToFp32(0x3c01));  // a tie: rounds to even
  x[4] = 15.f;
  x[5] = -12.f;  // past GELU's table on both sides

  std::vector<XQ8Block> qa(31), qb(31);  // 992 values
  s.quantize_q8(x.data(), 992, qa.data());
  k.quantize_q8(x.data(), 992, qb.data());
  Check(std::memcmp(qa.data(), qb.data(), sizeof(XQ8Block) * 31) == 0, lv + " quantize_q8 bit for bit");

  std::vector<uint16_t> ha(n), hb(n);
  s.to_f16(x.data(), ha.data(), n);
  k.to_f16(x.data(), hb.data(), n);
  Check(ha == hb, lv + " to_f16 bit for bit");
  std::vector<float> fa(n), fb(n);
  s.f16_to_f32(ha.data(), fa.data(), n);
  k.f16_to_f32(ha.data(), fb.data(), n);
  Check(fa == fb, lv + " f16_to_f32 bit for bit");
  fa = x;
  fb = x;
  s.round_f16(fa.data(), n);
  k.round_f16(fb.data(), n);
  Check(fa == fb, lv + " round_f16 bit for bit");
  std::vector<float> u(n);
  for (float& v : u) v = normal(rng);
  fa = x;
  fb = x;
  s.gelu_mul(fa.data(), u.data(), n);
  k.gelu_mul(fb.data(), u.data(), n);
  Check(fa == fb, lv + " gelu_mul bit for bit");

  // Attention: one block of 16 keys (13 valid) of head size 72, 5 query rows.
  const int64_t d = 72, ldk = 80;
  const int nk = 13, rows = 5;
  std::vector<uint16_t> keys(16 * ldk);
  for (uint16_t& h : keys) h = Fp32ToFp16(normal(rng));
  std::vector<float> kta(d * 16), ktb(d * 16), vf(16 * d);
  const auto* key_bytes = reinterpret_cast<const uint8_t*>(keys.data());
  s.attn_keys(KvType::kF16, key_bytes, 2 * ldk, nk, d, vf.data(), kta.data());
  k.attn_keys(KvType::kF16, key_bytes, 2 * ldk, nk, d, vf.data(), ktb.data());
  Check(kta == ktb, lv + " attn_keys bit for bit");
  // Quantized KV rows of 96 values, a head of 64 starting at value 32: dequantized (values)
  // and transposed (keys) bit for bit at every level.
  for (KvType t : {KvType::kQ8_0, KvType::kQ4_0}) {
    const int64_t dq = 64, row = KvRowBytes(t, 96), off = KvRowBytes(t, 32);
    std::vector<uint8_t> kv(16 * row);
    std::vector<float> xr(96);
    for (int r = 0; r < 16; ++r) {
      for (float& e : xr) e = normal(rng);
      StoreKvRow(s, t, xr.data(), 96, kv.data() + r * row);
    }
    std::vector<float> ra(16 * dq, 0.f), rb(16 * dq, 0.f), ka(dq * 16), kb(dq * 16), vq(16 * dq);
    s.kv_rows(t, kv.data() + off, row, nk, dq, ra.data());
    k.kv_rows(t, kv.data() + off, row, nk, dq, rb.data());
    Check(ra == rb, lv + " kv_rows " + KvTypeName(t) + " bit for bit");
    s.attn_keys(t, kv.data() + off, row, nk, dq, vq.data(), ka.data());
    k.attn_keys(t, kv.data() + off, row, nk, dq, vq.data(), kb.data());
    Check(ka == kb, lv + " attn_keys " + KvTypeName(t) + " bit for bit");
  }
  std::vector<float> q(rows * d);
  for (float& v : q) v = normal(rng);
  std::vector<const float*> qp(rows);
  for (int r = 0; r < rows; ++r) qp[r] = q.data() + r * d;
  std::vector<float> sa(rows * 16), sb(rows * 16);
  s.attn_scores(qp.data(), rows, kta.data(), d, sa.data(), 16);
  k.attn_scores(qp.data(), rows, kta.data(), d, sb.data(), 16);
  bool ok = true;
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < 16; ++j) {
      double scale = 0;
      for (int64_t i = 0; i < d; ++i) scale += std::fabs(q[r * d + i] * kta[i * 16 + j]);
      if (!(std::fabs(sa[r * 16 + j] - sb[r * 16 + j]) <= 1e-5 * scale + 1e-6)) ok = false;
    }
  }
  Check(ok, lv + " attn_scores within float32 summation order");
  std::vector<float> p(rows * 16), v(nk * d);
  for (float& e : p) e = std::fabs(normal(rng));
  for (float& e : v) e = normal(rng);
  std::vector<float> oa(rows * d, 0.f), ob(rows * d, 0.f);
  std::vector<float*> opa(rows), opb(rows);
  for (int r = 0; r < rows; ++r) {
    opa[r] = oa.data() + r * d;
    opb[r] = ob.data() + r * d;
  }
  s.attn_values(p.data(), 16, rows, v.data(), nk, d, opa.data());
  k.attn_values(p.data(), 16, rows, v.data(), nk, d, opb.data());
  ok = true;
  for (int r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < d; ++i) {
      double scale = 0;
      for (int j = 0; j < nk; ++j) scale += std::fabs(p[r * 16 + j] * v[j * d + i]);
      if (!(std::fabs(oa[r * d + i] - ob[r * d + i]) <= 1e-5 * scale + 1e-6)) ok = false;
    }
  }
  Check(ok, lv + " attn_values within float32 summation order");
}

int Kernels() {
  std::printf("best level: %s\n", IsaName(BestIsa()));
  ThreadPool pool(2);
  std::vector<const KernelSet*> sets = {Avx2Kernels(), Avx512Kernels(), NeonKernels(), NeonDotKernels()};
  int tested = 0;
  for (const KernelSet* k : sets) {
    if (!k || !IsaAtMost(k->level, BestIsa())) continue;
    ++tested;
    CheckProducts(k->level, pool);
    CheckOthers(*k);
  }
  Check(tested > 0 || BestIsa() == IsaLevel::kScalar, "a SIMD level was tested");
  return failures ? 1 : 0;
}

int Generate(const char* path, int64_t n, const std::vector<int32_t>& prompt) {
  EngineOptions opts;
  opts.n_ctx = 512;
  opts.n_threads = 2;
  opts.kv_cache_bytes = int64_t{64} << 20;
  Engine engine(path, opts);
  RequestOptions ro;
  ro.gen.sampling.temperature = 0;
  ro.gen.max_tokens = n;
  ro.gen.ignore_eos = true;
  std::shared_ptr<Request> req = engine.Submit(prompt, ro);
  GenerationStep step;
  std::printf("%s", IsaName(ActiveIsa()));
  while (req->Next(&step, -1)) {
    if (step.token >= 0) std::printf(" %d", step.token);
    if (step.done) break;
  }
  std::printf("\n");
  if (!req->error().empty()) {
    std::fprintf(stderr, "error: %s\n", req->error().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace pyengine

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "kernels") return pyengine::Kernels();
  if (cmd == "generate" && argc > 4) {
    std::vector<int32_t> prompt;
    for (int i = 4; i < argc; ++i) prompt.push_back(std::atoi(argv[i]));
    try {
      return pyengine::Generate(argv[2], std::atoll(argv[3]), prompt);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "usage: kernels_check kernels | kernels_check generate MODEL N ID...\n");
  return 2;
}
