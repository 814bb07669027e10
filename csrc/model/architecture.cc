#include "model/architecture.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/gguf.h"
#include "model/gemma3.h"
#include "model/gemma3n.h"
#include "model/gemma4.h"
#include "model/tensor_table.h"

namespace pyengine {

const std::vector<Architecture>& Architectures() {
  static const std::vector<Architecture> archs = {
      {"gemma3", ConfigureGemma3, LoadGemma3},
      {"gemma3n", ConfigureGemma3n, LoadGemma3n},
      {"gemma4", ConfigureGemma4, LoadGemma4},
  };
  return archs;
}

const Architecture* FindArchitecture(const std::string& name) {
  for (const Architecture& a : Architectures()) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

std::vector<std::string> SupportedArchs() {
  std::vector<std::string> names;
  for (const Architecture& a : Architectures()) names.push_back(a.name);
  return names;
}

namespace {

// An integer key that may also be a per-layer array (Gemma 3n writes feed_forward_length so,
// Gemma 4 head_count_kv and feed_forward_length with values that differ): [n_layer] values, the
// scalar repeated where it is one. `fallback` where the key is absent (-1: required).
std::vector<int32_t> PerLayerInts(const GgufFile& f, const std::string& key, int64_t n_layer,
                                  int64_t fallback) {
  const GgufValue* v = f.Find(key);
  if (!v) {
    if (fallback < 0) f.GetInt(key);  // fails naming the missing key
    return std::vector<int32_t>(static_cast<size_t>(n_layer), static_cast<int32_t>(fallback));
  }
  std::vector<int32_t> out;
  if (v->type == GgufType::kArray) {
    if (v->elem_type == GgufType::kArray || v->elem_type == GgufType::kString ||
        v->count != static_cast<uint64_t>(n_layer)) {
      // The file reads; its model contradicts itself.
      throw ModelError(f.path() + ": key '" + key + "' must be an integer or an array of " +
                       std::to_string(n_layer) + " (block_count) integers");
    }
    for (uint64_t i = 0; i < v->count; ++i) {
      const int64_t x = v->IntegerAt(i);
      if (x < 0 || x > (int64_t{1} << 20)) f.Fail("key '" + key + "' has an entry out of range");
      out.push_back(static_cast<int32_t>(x));
    }
    return out;
  }
  const int64_t x = f.GetInt(key);
  if (x < 0 || x > (int64_t{1} << 20)) f.Fail("key '" + key + "' is out of range");
  return std::vector<int32_t>(static_cast<size_t>(n_layer), static_cast<int32_t>(x));
}

int32_t MaxOf(const std::vector<int32_t>& v) { return *std::max_element(v.begin(), v.end()); }

}  // namespace

double FirstFloat(const GgufFile& f, const std::vector<std::string>& keys, double fallback) {
  for (const std::string& k : keys) {
    if (f.Find(k)) return f.GetFloat(k);
  }
  return fallback;
}

void SetLayerPattern(const GgufFile& f, ModelConfig& c, int64_t period) {
  const std::string p = c.arch + ".";
  c.layer_is_swa.assign(static_cast<size_t>(c.n_layer), 0);
  if (const GgufValue* pat = f.Find(p + "attention.sliding_window_pattern")) {
    if (pat->type != GgufType::kArray || pat->elem_type != GgufType::kBool ||
        pat->count != static_cast<uint64_t>(c.n_layer)) {
      f.Fail("attention.sliding_window_pattern must be a bool array of block_count entries");
    }
    for (int64_t l = 0; l < c.n_layer; ++l) c.layer_is_swa[l] = pat->NumberAt(l) != 0;
  } else {
    for (int64_t l = 0; l < c.n_layer; ++l) c.layer_is_swa[l] = (l % period) < period - 1;
  }
  c.kv_layer.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) c.kv_layer[l] = static_cast<int32_t>(l);
}

ModelConfig LoadConfig(const GgufFile& f) {
  ModelConfig c;
  c.arch = f.GetString("general.architecture");
  const Architecture* arch = FindArchitecture(c.arch);
  if (!arch) {
    std::string runs;
    for (const std::string& a : SupportedArchs()) runs += (runs.empty() ? "" : ", ") + a;
    throw ModelError(f.path() + ": unsupported architecture '" + c.arch + "' (this engine runs: " +
                     runs + ")");
  }
  c.name = f.GetString("general.name", "");
  const std::string p = c.arch + ".";
  auto positive = [&](const std::string& key, int64_t v, int64_t max) {
    if (v <= 0 || v > max) f.Fail("key '" + key + "' = " + std::to_string(v) + " is out of range");
    return v;
  };
  c.n_ctx_train = positive(p + "context_length", f.GetInt(p + "context_length"), int64_t{1} << 24);
  c.n_embd = positive(p + "embedding_length", f.GetInt(p + "embedding_length"), 1 << 16);
  c.n_layer = positive(p + "block_count", f.GetInt(p + "block_count"), 1024);
  // Per-layer values are kept where they differ (Gemma 4; the others refuse that in their
  // configure); the scalars hold the largest, which buffers are sized by.
  c.layer_n_ff = PerLayerInts(f, p + "feed_forward_length", c.n_layer, -1);
  c.n_ff = positive(p + "feed_forward_length", MaxOf(c.layer_n_ff), 1 << 20);
  c.n_head = positive(p + "attention.head_count", f.GetInt(p + "attention.head_count"), 1024);
  c.layer_n_head_kv = PerLayerInts(f, p + "attention.head_count_kv", c.n_layer, c.n_head);
  c.n_head_kv = positive(p + "attention.head_count_kv", MaxOf(c.layer_n_head_kv), 1024);
  for (int32_t kv : c.layer_n_head_kv) {
    if (kv <= 0 || c.n_head % kv != 0) {
      f.Fail("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
             std::to_string(kv));
    }
  }
  // Ollama's Gemma 3n blobs name the head dimension '<arch>.head_dim' instead.
  int64_t hk = f.GetInt(p + "attention.key_length", f.GetInt(p + "head_dim", c.n_embd / c.n_head));
  int64_t hv = f.GetInt(p + "attention.value_length", hk);
  if (hk != hv) f.Fail("key_length != value_length is not supported");
  c.head_dim = positive(p + "attention.key_length", hk, 4096);
  if (c.head_dim % 2 != 0) f.Fail("head dimension must be even for RoPE");
  c.sliding_window = positive(p + "attention.sliding_window",
                              f.GetInt(p + "attention.sliding_window"), int64_t{1} << 24);
  c.rms_eps = static_cast<float>(f.GetFloat(p + "attention.layer_norm_rms_epsilon", 1e-6));
  if (!(c.rms_eps >= 0.f && c.rms_eps < 1.f)) f.Fail("layer_norm_rms_epsilon is out of range");
  // Ollama's blobs name the bases rope.global.freq_base / rope.local.freq_base (Gemma 3) or
  // rope.freq_base_local (Gemma 3n), or leave them out (Gemma 3 4B and larger); the flat
  // names win where both are present, as in Ollama's patch.
  c.rope_base = static_cast<float>(
      FirstFloat(f, {p + "rope.freq_base", p + "rope.global.freq_base"}, 1e6));
  c.rope_base_swa = static_cast<float>(FirstFloat(
      f, {p + "rope.freq_base_swa", p + "rope.local.freq_base", p + "rope.freq_base_local"},
      10000.0));
  if (!(c.rope_base > 0) || !(c.rope_base_swa > 0) || !std::isfinite(c.rope_base) ||
      !std::isfinite(c.rope_base_swa)) {
    f.Fail("rope.freq_base must be positive and finite");
  }
  // Linear RoPE scaling where the file states it (Gemma 3 fills in what Ollama's blobs leave
  // out: see ConfigureGemma3).
  const std::string scaling = f.GetString(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    const double factor = f.GetFloat(p + "rope.scaling.factor", 1.0);
    if (!(factor >= 1e-3 && factor <= 1e6)) f.Fail("rope.scaling.factor is out of range");
    c.rope_scale = static_cast<float>(1.0 / factor);
  } else if (scaling != "none") {
    throw ModelError(f.path() + ": rope scaling '" + scaling + "' is not supported for " + c.arch);
  }

  const std::string emb_name = GlobalTensorName(TensorId::kTokEmbd);
  const TensorView* emb = f.FindTensor(emb_name);
  if (!emb) f.Fail("tensor '" + emb_name + "' is missing");
  if (emb->n_dims != 2 || emb->ne[0] != c.n_embd) {
    f.Fail(emb_name + " has shape [" + std::to_string(emb->ne[0]) + ", " +
           std::to_string(emb->ne[1]) + "], expected [" + std::to_string(c.n_embd) + ", n_vocab]");
  }
  c.n_vocab = emb->ne[1];
  if (c.n_vocab > (int64_t{1} << 30)) f.Fail("vocabulary of " + std::to_string(c.n_vocab) + " rows is too large");
  arch->configure(f, c);
  // Uniform per-layer values are dropped: the scalars say it all.
  auto uniform = [](const std::vector<int32_t>& v) {
    return std::all_of(v.begin(), v.end(), [&](int32_t x) { return x == v[0]; });
  };
  if (uniform(c.layer_n_ff)) c.layer_n_ff.clear();
  if (uniform(c.layer_n_head_kv)) c.layer_n_head_kv.clear();
  if (uniform(c.layer_head_dim) && uniform(c.layer_n_rot) &&
      (c.layer_n_rot.empty() || c.layer_n_rot[0] == c.head_dim)) {
    c.layer_head_dim.clear();
    c.layer_n_rot.clear();
  }
  return c;
}

void RequireUniformLayers(const GgufFile& f, const ModelConfig& c) {
  auto check = [&](const std::vector<int32_t>& v, const std::string& key) {
    for (int32_t x : v) {
      if (x != v[0]) {
        throw ModelError(f.path() + ": per-layer '" + c.arch + "." + key + "' values differ; " +
                         c.arch + " runs one value for all layers");
      }
    }
  };
  check(c.layer_n_ff, "feed_forward_length");
  check(c.layer_n_head_kv, "attention.head_count_kv");
}

}  // namespace pyengine
