#include "core/config.h"

#include <cmath>

#include "core/errors.h"
#include "core/gguf.h"

namespace pyengine {

const std::vector<std::string>& SupportedArchs() {
  static const std::vector<std::string> archs = {"gemma3", "gemma3n"};
  return archs;
}

bool IsSupportedArch(const std::string& arch) {
  for (const std::string& a : SupportedArchs()) {
    if (a == arch) return true;
  }
  return false;
}

namespace {

// Gemma 3n constants llama.cpp fixes in code, whatever the file's keys say.
constexpr int64_t kGemma3nKvLayers = 20;     // layers 0..19 own their KV; later ones share it
constexpr float kGemma3nSoftcap = 30.f;

// An integer key that may also be a per-layer array (Gemma 3n writes feed_forward_length so);
// every entry must be equal, since this engine has one width per model.
int64_t IntOrUniformArray(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.Find(key);
  if (v && v->type == GgufType::kArray) {
    if (v->count == 0 || v->elem_type == GgufType::kArray || v->elem_type == GgufType::kString) {
      f.Fail("key '" + key + "' must be an integer or an array of integers");
    }
    const int64_t first = v->IntegerAt(0);
    for (uint64_t i = 1; i < v->count; ++i) {
      if (v->IntegerAt(i) != first) {
        throw ModelError(f.path() + ": per-layer '" + key + "' values differ; this engine runs "
                         "one width for all layers");
      }
    }
    return first;
  }
  return f.GetInt(key);
}

}  // namespace

ModelConfig LoadConfig(const GgufFile& f) {
  ModelConfig c;
  c.arch = f.GetString("general.architecture");
  if (!IsSupportedArch(c.arch)) {
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
  c.n_ff = positive(p + "feed_forward_length", IntOrUniformArray(f, p + "feed_forward_length"),
                   1 << 20);
  c.n_head = positive(p + "attention.head_count", f.GetInt(p + "attention.head_count"), 1024);
  c.n_head_kv = positive(p + "attention.head_count_kv",
                         f.GetInt(p + "attention.head_count_kv", c.n_head), 1024);
  if (c.n_head % c.n_head_kv != 0) {
    f.Fail("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
           std::to_string(c.n_head_kv));
  }
  int64_t hk = f.GetInt(p + "attention.key_length", c.n_embd / c.n_head);
  int64_t hv = f.GetInt(p + "attention.value_length", hk);
  if (hk != hv) f.Fail("key_length != value_length is not supported");
  c.head_dim = positive(p + "attention.key_length", hk, 4096);
  if (c.head_dim % 2 != 0) f.Fail("head dimension must be even for RoPE");
  c.sliding_window = positive(p + "attention.sliding_window",
                              f.GetInt(p + "attention.sliding_window"), int64_t{1} << 24);
  c.rms_eps = static_cast<float>(f.GetFloat(p + "attention.layer_norm_rms_epsilon", 1e-6));
  if (!(c.rms_eps >= 0.f && c.rms_eps < 1.f)) f.Fail("layer_norm_rms_epsilon is out of range");
  c.rope_base = static_cast<float>(f.GetFloat(p + "rope.freq_base", 1e6));
  c.rope_base_swa = static_cast<float>(f.GetFloat(p + "rope.freq_base_swa", 10000.0));
  if (!(c.rope_base > 0) || !(c.rope_base_swa > 0) || !std::isfinite(c.rope_base) ||
      !std::isfinite(c.rope_base_swa)) {
    f.Fail("rope.freq_base must be positive and finite");
  }
  std::string scaling = f.GetString(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    double factor = f.GetFloat(p + "rope.scaling.factor", 1.0);
    if (!(factor >= 1e-3 && factor <= 1e6)) f.Fail("rope.scaling.factor is out of range");
    c.rope_scale = static_cast<float>(1.0 / factor);
  } else if (scaling != "none") {
    throw ModelError(f.path() + ": rope scaling '" + scaling + "' is not supported for gemma3");
  }
  const bool is3n = c.arch == "gemma3n";
  // Gemma 3 27B (62 layers) scales queries by 1/sqrt(n_embd/n_head), the others by
  // 1/sqrt(head_dim); Gemma 3n does not scale them (its q norm carries the scale).
  c.attn_scale = is3n ? 1.f
                 : c.n_layer == 62 ? 1.f / std::sqrt(static_cast<float>(c.n_embd / c.n_head))
                                   : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  if (!std::isfinite(c.attn_scale)) f.Fail("embedding_length / head_count is zero");
  c.final_softcap = is3n ? kGemma3nSoftcap
                         : static_cast<float>(f.GetFloat(p + "final_logit_softcapping", 0.0));
  if (!(c.final_softcap >= 0.f && std::isfinite(c.final_softcap))) f.Fail("final_logit_softcapping is out of range");

  // Gemma 3: five sliding-window layers, then one global; Gemma 3n: four, then one; unless the
  // file lists the pattern itself.
  const int64_t period = is3n ? 5 : 6;
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
  // Gemma 3n: layers from 20 on read the KV of the last earlier layer of their own kind.
  c.kv_layer.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    c.kv_layer[l] = static_cast<int32_t>(l);
    if (!is3n || l < kGemma3nKvLayers) continue;
    int64_t src = kGemma3nKvLayers - 1;
    while (src >= 0 && c.layer_is_swa[src] != c.layer_is_swa[l]) --src;
    if (src < 0) f.Fail("no earlier layer of the same kind to share KV with");
    c.kv_layer[l] = static_cast<int32_t>(src);
  }

  const TensorView* emb = f.FindTensor("token_embd.weight");
  if (!emb) f.Fail("tensor 'token_embd.weight' is missing");
  if (emb->n_dims != 2 || emb->ne[0] != c.n_embd) {
    f.Fail("token_embd.weight has shape [" + std::to_string(emb->ne[0]) + ", " +
           std::to_string(emb->ne[1]) + "], expected [" + std::to_string(c.n_embd) + ", n_vocab]");
  }
  c.n_vocab = emb->ne[1];
  if (c.n_vocab > (int64_t{1} << 30)) f.Fail("vocabulary of " + std::to_string(c.n_vocab) + " rows is too large");
  return c;
}

}  // namespace pyengine
