#include "core/config.h"

#include <cmath>
#include <initializer_list>

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

// The first of `keys` the file has, as a float; `fallback` when it has none.
double FirstFloat(const GgufFile& f, std::initializer_list<std::string> keys, double fallback) {
  for (const std::string& k : keys) {
    if (f.Find(k)) return f.GetFloat(k);
  }
  return fallback;
}

bool HasTensorWithPrefix(const GgufFile& f, const std::string& prefix) {
  for (const TensorView& t : f.tensors()) {
    if (t.name.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

// Context length from which Ollama's blobs of Gemma 3 4B/12B/27B imply linear RoPE scaling x8
// (their converter wrote no rope.scaling keys; the 1B and 270M have 32768 and no scaling).
constexpr int64_t kOllamaScaledContext = 131072;
constexpr double kOllamaImpliedScaling = 8.0;
// What Ollama's older Gemma 3 converter wrote as final_logit_softcapping when the model has
// none (every Gemma 3 text model); it wrote it next to rope.global.freq_base.
constexpr double kOllamaDefaultSoftcap = 30.0;

}  // namespace

bool IsOllamaGemma3(const GgufFile& f) {
  if (f.GetString("general.architecture", "") != "gemma3") return false;
  return f.Find("gemma3.mm.tokens_per_image") || HasTensorWithPrefix(f, "v.") ||
         HasTensorWithPrefix(f, "mm.") || f.Find("gemma3.rope.global.freq_base") ||
         f.Find("gemma3.rope.local.freq_base") || f.Find("tokenizer.ggml.add_padding_token") ||
         f.Find("tokenizer.ggml.add_unknown_token") ||
         !f.Find("gemma3.attention.layer_norm_rms_epsilon");
}

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
  // Ollama's blobs of the 131072-context models (4B/12B/27B) carry no scaling keys although
  // the models scale linearly by 8; its patch fills in each missing key by context length.
  // Its older engine decided by layer count (34/48/62) instead: where the two rules disagree
  // the scaling cannot be told from the file.
  const bool ollama = IsOllamaGemma3(f);
  const bool implied = ollama && c.n_ctx_train >= kOllamaScaledContext;
  if (ollama && !implied && !f.Find(p + "rope.scaling.type") &&
      !f.Find(p + "rope.scaling.factor") &&
      (c.n_layer == 34 || c.n_layer == 48 || c.n_layer == 62)) {
    f.Fail("key '" + p + "rope.scaling.factor' is missing and cannot be inferred: a " +
           std::to_string(c.n_layer) + "-layer Ollama Gemma 3 blob with a context of " +
           std::to_string(c.n_ctx_train) + " may or may not scale RoPE by 8");
  }
  std::string scaling = f.GetString(p + "rope.scaling.type", implied ? "linear" : "none");
  if (scaling == "linear") {
    double factor = f.GetFloat(p + "rope.scaling.factor", implied ? kOllamaImpliedScaling : 1.0);
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
  // Ollama's older Gemma 3 converter (the one that wrote rope.global.freq_base) filled in 30
  // where the model has no final softcap (no Gemma 3 has one); its own engine dropped it again.
  if (!is3n && f.Find(p + "rope.global.freq_base") && c.final_softcap == kOllamaDefaultSoftcap) {
    c.final_softcap = 0.f;
  }
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
  if (is3n) {
    // llama.cpp's converter pads this table with zero rows to token_embd's 262400; Ollama's
    // blobs keep HF's 262144 rows (ids past them are the image/audio tokens). The model binds
    // and checks the tensor itself; here only its row count matters.
    c.n_vocab_per_layer = c.n_vocab;
    const TensorView* ple = f.FindTensor("per_layer_token_embd.weight");
    if (ple && ple->n_dims == 2) {
      if (ple->ne[1] > c.n_vocab) {
        f.Fail("per_layer_token_embd.weight has " + std::to_string(ple->ne[1]) +
               " rows, more than token_embd.weight's " + std::to_string(c.n_vocab));
      }
      c.n_vocab_per_layer = ple->ne[1];
    }
  }
  return c;
}

}  // namespace pyengine
