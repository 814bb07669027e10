#include "model/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.h"
#include "quant/kernel_set.h"
#include "quant/kv_quantize.h"
#include "core/thread_pool.h"

namespace pyengine {
namespace {

std::string Shape(const TensorView& t) {
  std::string s = "[";
  for (int d = 0; d < t.n_dims; ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
  return s + "]";
}

// Per-token work is split over the pool only when there are enough tokens to pay for it.
constexpr int64_t kMinTokens = 8;

}  // namespace

TensorView Bind(const GgufFile& f, const std::string& name, std::vector<int64_t> ne, bool optional) {
  const TensorView* t = f.FindTensor(name);
  if (!t) {
    if (optional) return TensorView{};
    throw ModelError(f.path() + ": tensor '" + name + "' is missing");
  }
  bool ok = t->n_dims == static_cast<int>(ne.size());
  for (size_t d = 0; ok && d < ne.size(); ++d) ok = t->ne[d] == ne[d];
  if (!ok) {
    TensorView want;
    want.n_dims = static_cast<int>(ne.size());
    for (size_t d = 0; d < ne.size(); ++d) want.ne[d] = ne[d];
    throw ModelError(f.path() + ": tensor '" + name + "' has shape " + Shape(*t) + ", expected " +
                     Shape(want));
  }
  if (!IsSupportedWeightType(t->type)) {
    throw ModelError(f.path() + ": tensor '" + name + "' has type " + TypeName(t->type) +
                     ", which this engine cannot compute with yet (it computes " +
                     SupportedWeightTypes() + ")");
  }
  return *t;
}

std::vector<float> BindVector(const GgufFile& f, const std::string& name, int64_t n) {
  TensorView t = Bind(f, name, {n});
  std::vector<float> v(static_cast<size_t>(n));
  DequantizeRow(t.type, t.data, v.data(), n);
  return v;
}

std::vector<float> BindFloats(const GgufFile& f, const std::string& name, std::vector<int64_t> ne) {
  TensorView t = Bind(f, name, ne);
  const int64_t cols = ne[0], rows = t.rows();
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) DequantizeRow(t.type, t.row(r), v.data() + r * cols, cols);
  return v;
}

std::unique_ptr<WeightArena> WeightPacker::Pack(const GgufFile& f, ThreadPool& pool) {
  size_t total = 0;
  for (const auto& job : jobs_) total += PackedMatrix::PackedBytes(job.first);
  auto arena = std::make_unique<WeightArena>(total);
  size_t offset = 0;
  // Slices of about 16 MB: the packed copy replaces the file's bytes slice by slice, and the
  // slice's file pages are released at once, so memory never holds a large tensor twice.
  constexpr size_t kSliceBytes = size_t{16} << 20;
  for (const auto& [view, dst] : jobs_) {
    uint8_t* at = arena->data() + offset;
    *dst = PackedMatrix::Unpacked(view, at);
    const int64_t step = std::max<int64_t>(
        1, static_cast<int64_t>(kSliceBytes / std::max<size_t>(view.row_bytes(), 1)) / 16) * 16;
    for (int64_t r0 = 0; r0 < view.rows(); r0 += step) {
      const int64_t r1 = std::min(view.rows(), r0 + step);
      f.Prefault(view.Rows(r0, r1));
      PackedMatrix::PackRows(view, r0, r1, pool, at);
      f.ReleasePages(view.Rows(r0, r1));
    }
    offset += PackedMatrix::PackedBytes(view);
  }
  jobs_.clear();
  return arena;
}

TensorView Slice(const TensorView& t, int64_t i) {
  TensorView s = t;
  s.n_dims = 2;
  s.ne[2] = 1;
  const size_t bytes = t.nbytes / static_cast<size_t>(t.ne[2]);
  s.data = t.data + static_cast<size_t>(i) * bytes;
  s.nbytes = bytes;
  s.name = t.name + "[" + std::to_string(i) + "]";
  return s;
}

void RmsNorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = out + t * dim;
    // Squares are exact in double; eight partial sums (fixed order, so every build and core
    // sums alike) keep the adds from waiting on each other.
    double part[8] = {};
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8) {
      for (int j = 0; j < 8; ++j) part[j] += static_cast<double>(xr[i + j]) * xr[i + j];
    }
    for (; i < dim; ++i) part[0] += static_cast<double>(xr[i]) * xr[i];
    const double ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    const float scale = 1.f / std::sqrt(static_cast<float>(ss / dim) + eps);
    if (w) {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * w[i];
    } else {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale;
    }
  }
}

namespace {

// tanh(x) = x + x^3 P(x^2) below 0.55 (a least-squares fit of tanh's series, 1e-10 relative);
// above, 1 - 2 / (e^2|x| + 1), which cannot cancel there (tanh >= 0.5), with e^y = 2^k e^r,
// y = k ln2 + r, |r| <= ln2 / 2, and e^r its Taylor series to r^7 (5e-9 relative).
inline float Tanh(float x) {
  constexpr float kP[6] = {-0.3333333134651184f, 0.13333295285701752f, -0.05395984649658203f,
                           0.02178391069173813f, -0.008416402153670788f, 0.0023974976502358913f};
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187e-06f;  // ln2, split
  const float a = std::fabs(x), z = x * x;
  float p = kP[5];
  for (int i = 4; i >= 0; --i) p = p * z + kP[i];
  const float small = x + x * z * p;
  // tanh(44) is 1 in float; e^88 still fits. NaN goes this way too (and is returned as is).
  const float twice = 2.f * a;
  const float y = twice < 88.f ? twice : 88.f;
  const int32_t k = static_cast<int32_t>(y * kLog2e + 0.5f);  // y >= 0: rounds to nearest
  const float r = (y - static_cast<float>(k) * kLn2Hi) - static_cast<float>(k) * kLn2Lo;
  float e = 1.f / 5040.f;
  e = e * r + 1.f / 720.f;
  e = e * r + 1.f / 120.f;
  e = e * r + 1.f / 24.f;
  e = e * r + 1.f / 6.f;
  e = e * r + 0.5f;
  e = e * r + 1.f;
  e = e * r + 1.f;
  const int32_t bits = (k + 127) << 23;  // 2^k, k in [0, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float big = std::copysign(1.f - 2.f / (e * scale + 1.f), x);
  const float t = a < 0.55f ? small : big;
  return x != x ? x : t;
}

}  // namespace

void Softcap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = cap * Tanh(x[i] / cap);
}

void NormRows(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out,
              ThreadPool& pool) {
  ParallelRanges(pool, n, kMinTokens, [&](int64_t t0, int64_t t1) {
    RmsNorm(x + t0 * dim, w, t1 - t0, dim, eps, out + t0 * dim);
  });
}

std::vector<float> RopeInvFreq(int64_t d, float base, float scale) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    f[i] = scale * std::pow(base, -2.f * static_cast<float>(i) / static_cast<float>(d));
  }
  return f;
}

void RopeAngles(int64_t d, int64_t pos, const float* inv_freq, float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float theta = static_cast<float>(pos) * inv_freq[i];
    cs[i] = std::cos(theta);
    cs[half + i] = std::sin(theta);
  }
}

void Rope(float* x, int64_t d, const float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = cs[i], s = cs[half + i];
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x0 * s + x1 * c;
  }
}

void CheckBatch(const ModelConfig& c, const Batch& batch) {
  for (int64_t t = 0; t < batch.size(); ++t) {
    const int32_t tok = batch.tokens[t];
    if (tok < 0 || tok >= c.n_vocab) {
      throw EngineError("token id " + std::to_string(tok) + " is outside the vocabulary");
    }
    if (batch.pos[t] < 0 || batch.pos[t] >= batch.views[batch.seq[t]].capacity()) {
      throw EngineError("position " + std::to_string(batch.pos[t]) + " has no KV block");
    }
  }
}

int64_t PrepareBatch(const ModelConfig& c, const Batch& batch, Workspace& ws, ThreadPool& pool) {
  const int64_t n = batch.size();
  CheckBatch(c, batch);
  // Scores rows are as long as the longest sequence in the batch.
  int64_t longest = 1;
  for (int64_t t = 0; t < n; ++t) longest = std::max<int64_t>(longest, batch.pos[t] + 1);
  const int64_t E = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), F = c.n_ff;
  Grow(ws.x, n * E); Grow(ws.xn, n * E); Grow(ws.o, n * E);
  Grow(ws.q, n * QD); Grow(ws.attn, n * QD);
  Grow(ws.k, n * KVD); Grow(ws.v, n * KVD);
  Grow(ws.gate, n * F); Grow(ws.up, n * F);
  // Attend's per-thread scratch: a tile's scores over its keys, and two key chunks.
  const int64_t bt = n > 0 ? batch.views[batch.seq[0]].arena->block_tokens() : 1;
  const int64_t lds = (longest + bt) + kAttnKeys;
  int64_t group = 1;  // the most query heads any layer has per KV head
  for (int64_t l = 0; l < c.n_layer; ++l) group = std::max(group, c.n_head / c.n_head_kv_at(l));
  Grow(ws.scores, pool.size() * (kAttnTileTokens * group * lds + 2 * kAttnKeys * c.head_dim));
  Grow(ws.rope, n * c.head_dim);
  return longest;
}

void PrepareQkv(const ModelConfig& c, int64_t l, const Batch& batch, Workspace& ws,
                const float* q_norm, const float* k_norm, const float* inv_freq, bool write_kv,
                bool v_norm, ThreadPool& pool) {
  // The layer's own shapes: Gemma 4's full and sliding layers differ.
  const int64_t D = c.head_dim_at(l), R = c.n_rot_at(l), QD = c.q_dim_at(l), KVD = c.kv_dim_at(l);
  const int64_t HKV = c.n_head_kv_at(l);
  const KernelSet& kernels = ActiveKernels();
  ParallelRanges(pool, batch.size(), kMinTokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pos = batch.pos[t];
      float* cs = ws.rope.data() + t * D;
      RopeAngles(R, pos, inv_freq, cs);  // the first R dimensions rotate, the rest stay
      for (int64_t h = 0; h < c.n_head; ++h) {
        float* qh = ws.q.data() + t * QD + h * D;
        RmsNorm(qh, q_norm, 1, D, c.rms_eps, qh);
        Rope(qh, R, cs);
        // q meets the fp16 keys in fp16, as in the reference's f16 dot product.
        for (int64_t i = 0; i < D; ++i) qh[i] *= c.attn_scale;
        kernels.round_f16(qh, D);
      }
      if (!write_kv) continue;
      for (int64_t h = 0; h < HKV; ++h) {
        float* kh = ws.k.data() + t * KVD + h * D;
        RmsNorm(kh, k_norm, 1, D, c.rms_eps, kh);
        Rope(kh, R, cs);
        if (v_norm) {
          float* vh = ws.v.data() + t * KVD + h * D;
          RmsNorm(vh, nullptr, 1, D, c.rms_eps, vh);
        }
      }
      const KvView& kv = batch.views[batch.seq[t]];
      const KvType type = kv.arena->type();
      StoreKvRow(kernels, type, ws.k.data() + t * KVD, KVD, kv.k(l, pos));
      StoreKvRow(kernels, type, ws.v.data() + t * KVD, KVD, kv.v(l, pos));
    }
  });
}

void Embed(const ModelConfig& c, const Batch& batch, const TensorView& tok_embd,
           const PackedMatrix& output, bool tied, float* x) {
  const int64_t E = c.n_embd;
  const float scale = std::sqrt(static_cast<float>(E));
  for (int64_t t = 0; t < batch.size(); ++t) {
    float* xr = x + t * E;
    if (tied) {
      output.Row(batch.tokens[t], xr);
    } else {
      DequantizeRow(tok_embd.type, tok_embd.row(batch.tokens[t]), xr, E);
    }
    for (int64_t i = 0; i < E; ++i) xr[i] *= scale;
  }
}

void Output(const ModelConfig& c, const Batch& batch, const float* x, const float* norm,
            const PackedMatrix& output, Workspace& ws, float* out, float* hidden,
            ThreadPool& pool) {
  const int64_t E = c.n_embd;
  if (hidden) {
    for (size_t r = 0; r < batch.hidden_rows.size(); ++r) {
      RmsNorm(x + batch.hidden_rows[r] * E, norm, 1, E, c.rms_eps, hidden + r * E);
    }
  }
  // Only the rows whose logits are wanted go through the (large) output projection.
  const int64_t n_out = static_cast<int64_t>(batch.out_rows.size());
  if (n_out == 0 || !out) return;
  for (int64_t r = 0; r < n_out; ++r) {
    RmsNorm(x + batch.out_rows[r] * E, norm, 1, E, c.rms_eps, ws.xn.data() + r * E);
  }
  ws.in.Set(ws.xn.data(), n_out, E);
  MatMul(output, ws.in, out, pool);
  if (c.final_softcap > 0) {
    // A quarter of a million per row, split over the threads.
    ParallelRanges(pool, n_out * c.n_vocab, 16384, [&](int64_t i0, int64_t i1) {
      Softcap(out + i0, i1 - i0, c.final_softcap);
    });
  }
}

void Attend(const ModelConfig& c, int64_t l, const Batch& batch, Workspace& ws, ThreadPool& pool) {
  // The layer's shapes. KV rows are as long as the arena's pages (the widest layer's), in the
  // arena's type; a head starts KvRowBytes(type, h * D) into a row.
  const int64_t D = c.head_dim_at(l), QD = c.q_dim_at(l), HKV = c.n_head_kv_at(l);
  if (batch.size() == 0) return;
  const KvArena& arena = *batch.views[batch.seq[0]].arena;
  const KvType kv_type = arena.type();
  const int64_t row_bytes = arena.row_bytes(), bt = arena.block_tokens();
  const int64_t group = c.n_head / HKV;  // query heads per KV head (GQA)
  const bool swa = c.layer_is_swa[l];
  const KernelSet& k = ActiveKernels();
  const int64_t n = batch.size();
  // Tiles: runs of at most kAttnTileTokens consecutive tokens of one sequence.
  std::vector<int64_t>& starts = ws.attn_tiles;
  starts.clear();
  for (int64_t t = 0; t < n; ++t) {
    if (t == 0 || batch.seq[t] != batch.seq[t - 1] || t - starts.back() == kAttnTileTokens) {
      starts.push_back(t);
    }
  }
  starts.push_back(n);
  const int64_t per_thread = static_cast<int64_t>(ws.scores.size()) / pool.size();
  auto first_key = [&](int64_t t) {  // causal; a sliding layer also drops pos - key >= window
    return swa ? std::max<int64_t>(0, batch.pos[t] - c.sliding_window + 1) : int64_t{0};
  };

  // One task per (tile, KV head): the tile's query rows (tokens x the group's heads) share every
  // key and value block, converted once for all of them.
  struct Task {
    int64_t t0, t1, kvh, base, last, lds;
    int rows;
    const KvView* kv;
    const float* q[kAttnTileTokens * kMaxGroup];
    float* o[kAttnTileTokens * kMaxGroup];
  };
  auto make_task = [&](int64_t task, Task& T) {
    T.t0 = starts[task / HKV];
    T.t1 = starts[task / HKV + 1];
    T.kvh = task % HKV;
    T.kv = &batch.views[batch.seq[T.t0]];
    T.rows = static_cast<int>((T.t1 - T.t0) * group);
    // Keys [base, last] cover every row's range; scores are kept from base, a block start.
    T.base = first_key(T.t0) / bt * bt;
    T.last = batch.pos[T.t1 - 1];
    T.lds = T.last - T.base + 1 + kAttnKeys;  // room for a last, partial key chunk
    for (int r = 0; r < T.rows; ++r) {
      const int64_t off = (T.t0 + r / group) * QD + (T.kvh * group + r % group) * D;
      T.q[r] = ws.q.data() + off;
      T.o[r] = ws.attn.data() + off;
      std::fill_n(T.o[r], D, 0.f);
    }
  };
  // The chunks of at most 16 keys of [base, last], each within one block: first key p, and
  // where its first row starts in the block's page. Blocks hold a whole number of chunks (bt
  // is a multiple of 16 or below it), and base is a block's first key.
  const int64_t per_block = (bt + kAttnKeys - 1) / kAttnKeys;
  auto n_chunks = [&](const Task& T) {
    return (T.last / bt - T.base / bt) * per_block + (T.last % bt) / kAttnKeys + 1;
  };
  auto chunk = [&](const Task& T, int64_t i, int64_t* p, int64_t* blk, int* nk, int64_t* off) {
    const int64_t b0 = T.base / bt;
    *blk = b0 + i / per_block;
    *p = *blk * bt + (i % per_block) * kAttnKeys;
    *nk = static_cast<int>(std::min({int64_t{kAttnKeys}, (*blk + 1) * bt - *p, T.last + 1 - *p}));
    *off = (*p - *blk * bt) * row_bytes + KvRowBytes(kv_type, T.kvh * D);
  };
  // The three stages of a task. Every tile, a prompt's or a decoding token's, transposes each
  // key chunk and takes its scores in the same order, and sums each output value over the keys
  // in the same order: a position's result must not depend on how the step that computed it
  // was batched or spread over threads (a preempted or prefix-shared sequence recomputes
  // positions in other tiles, and the greedy tokens must not change).
  // The cache's rows of chunk i (keys, or values from column d0 on, dn wide) are asked for
  // ahead of their use: decode reads them from memory, 16 strided rows at a time.
  auto prefetch = [&](const Task& T, int64_t i, bool values, int64_t d0, int64_t dn) {
    if (i >= n_chunks(T)) return;
    int64_t p, blk, off;
    int nk;
    chunk(T, i, &p, &blk, &nk, &off);
    const uint8_t* rows = values ? T.kv->v_block(l, blk) + off + KvRowBytes(kv_type, d0)
                                 : T.kv->k_block(l, blk) + off;
    const int64_t bytes = KvRowBytes(kv_type, dn);
    for (int j = 0; j < nk; ++j) {
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(rows + j * row_bytes + b);
    }
  };
  auto scores = [&](const Task& T, float* s, int64_t i, float* kt, float* vf) {
    int64_t p, blk, off;
    int nk;
    chunk(T, i, &p, &blk, &nk, &off);
    prefetch(T, i + 1, /*values=*/false, 0, D);
    k.attn_keys(kv_type, T.kv->k_block(l, blk) + off, row_bytes, nk, D, vf, kt);
    k.attn_scores(T.q, T.rows, kt, D, s + (p - T.base), T.lds);
  };
  auto softmax = [&](const Task& T, float* s, int r) {
    const int64_t t = T.t0 + r / group;
    float* sr = s + r * T.lds;
    const int64_t c0 = first_key(t) - T.base, c1 = batch.pos[t] - T.base;  // the row's keys
    float mx = -INFINITY;
    for (int64_t p = c0; p <= c1; ++p) mx = std::max(mx, sr[p]);
    double sum = 0;
    for (int64_t p = c0; p <= c1; ++p) {
      sr[p] = std::exp(sr[p] - mx);
      sum += sr[p];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t p = c0; p <= c1; ++p) sr[p] *= inv;
    // Weights rounded to fp16 as the reference's f16 product with V rounds them; keys outside
    // the row's range weigh nothing.
    k.round_f16(sr + c0, c1 - c0 + 1);
    std::fill(sr, sr + c0, 0.f);
    std::fill(sr + c1 + 1, sr + (T.last - T.base + 1), 0.f);
  };
  // Output values [d0, d0 + dn) of every row, over every key chunk in order.
  auto values = [&](const Task& T, const float* s, int64_t d0, int64_t dn, float* vf) {
    float* o[kAttnTileTokens * kMaxGroup];
    for (int r = 0; r < T.rows; ++r) o[r] = T.o[r] + d0;
    const int64_t m = n_chunks(T);
    for (int64_t i = 0; i < m; ++i) {
      int64_t p, blk, off;
      int nk;
      chunk(T, i, &p, &blk, &nk, &off);
      prefetch(T, i + 1, /*values=*/true, d0, dn);
      k.kv_rows(kv_type, T.kv->v_block(l, blk) + off + KvRowBytes(kv_type, d0), row_bytes, nk, dn,
                vf);
      k.attn_values(s + (p - T.base), T.lds, T.rows, vf, nk, dn, o);
    }
  };
  auto scratch = [&](int thread) { return ws.scores.data() + thread * per_thread; };
  const int64_t n_tasks = (static_cast<int64_t>(starts.size()) - 1) * HKV;
  if (n_tasks >= pool.size()) {
    pool.ParallelFor(n_tasks, [&](int64_t task, int thread) {
      Task T;
      make_task(task, T);
      float* s = scratch(thread);                 // [rows, lds] scores, then weights
      float* kt = s + T.rows * T.lds;             // [D, 16] a key chunk, transposed
      float* vf = kt + D * kAttnKeys;             // [16, D] a key or value chunk
      const int64_t m = n_chunks(T);
      for (int64_t i = 0; i < m; ++i) scores(T, s, i, kt, vf);
      for (int r = 0; r < T.rows; ++r) softmax(T, s, r);
      values(T, s, 0, D, vf);
    });
    return;
  }
  // Fewer tasks than threads (one decoding sequence over one or two KV heads, as in Gemma 3 1B
  // and Gemma 4 E2B): each task in turn, its key chunks spread over the threads for the scores,
  // its rows for the softmax and its head dimensions (slices of 64) for the values, so that no
  // key or value is converted twice. Every number is computed as in a whole task.
  for (int64_t task = 0; task < n_tasks; ++task) {
    Task T;
    make_task(task, T);
    float* s = scratch(0);  // the task's scores, shared by the threads
    pool.ParallelFor(n_chunks(T), [&](int64_t i, int thread) {
      float* kt = scratch(thread) + T.rows * T.lds;
      scores(T, s, i, kt, kt + D * kAttnKeys);
    });
    pool.ParallelFor(T.rows, [&](int64_t r, int) { softmax(T, s, static_cast<int>(r)); });
    constexpr int64_t kSlice = 64;
    pool.ParallelFor((D + kSlice - 1) / kSlice, [&](int64_t j, int thread) {
      float* vf = scratch(thread) + T.rows * T.lds + D * kAttnKeys;
      values(T, s, j * kSlice, std::min(kSlice, D - j * kSlice), vf);
    });
  }
}

}  // namespace pyengine
