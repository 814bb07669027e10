// ModelConfig: the plain hyper-parameters of a model, read once from GGUF metadata (by
// LoadConfig in model/architecture.h, with each architecture's own rules).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace pyengine {

struct ModelConfig {
  std::string arch;        // general.architecture, e.g. "gemma3"
  std::string name;        // general.name (may be empty)
  int64_t n_vocab = 0;     // rows of token_embd
  // Gemma 3n: rows of per_layer_token_embd (<= n_vocab). Ollama's blobs keep the text
  // vocabulary there while token_embd also has the multimodal ids; an id past this table has
  // a zero per-layer embedding, as llama.cpp's converter writes those rows. 0 for Gemma 3.
  int64_t n_vocab_per_layer = 0;
  int64_t n_ctx_train = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_ff = 0;        // the widest layer's (see layer_n_ff)
  int64_t n_head = 0;
  int64_t n_head_kv = 0;   // the most any layer has (see layer_n_head_kv)
  int64_t head_dim = 0;    // key_length == value_length; the largest of any layer
  int64_t sliding_window = 0;
  float rms_eps = 1e-6f;
  float rope_base = 10000.f;      // global layers
  float rope_base_swa = 10000.f;  // sliding-window layers
  float rope_scale = 1.f;         // global layers: position multiplier (1 / linear factor)
  float attn_scale = 1.f;         // multiplies q before q.k
  float final_softcap = 0.f;      // 0: none
  std::vector<uint8_t> layer_is_swa;  // [n_layer] 1 when the layer uses the sliding window
  // [n_layer] the layer whose keys and values each layer attends over: itself, or (Gemma 3n's
  // KV sharing) an earlier layer of the same kind, in which case it stores none of its own.
  std::vector<int32_t> kv_layer;
  // Per-layer shapes (Gemma 4: full and sliding layers differ in head size, KV heads and
  // rotated dimensions; KV-shared layers may be double-wide). Empty: every layer has the
  // scalar above (n_rot: head_dim).
  std::vector<int32_t> layer_head_dim, layer_n_head_kv, layer_n_ff, layer_n_rot;  // [n_layer]
  // Per-layer inputs: width of each layer's slice (Gemma 3n 256; Gemma 4 from the file, 0: none).
  int64_t n_embd_per_layer = 0;
  // Mixture of experts (Gemma 4 26B-A4B): experts per MoE layer, used per token, their width.
  int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0;
  std::vector<uint8_t> layer_is_moe;  // [n_layer] 1 where the FFN adds experts; empty: none

  int64_t head_dim_at(int64_t l) const { return layer_head_dim.empty() ? head_dim : layer_head_dim[l]; }
  int64_t n_head_kv_at(int64_t l) const { return layer_n_head_kv.empty() ? n_head_kv : layer_n_head_kv[l]; }
  int64_t n_ff_at(int64_t l) const { return layer_n_ff.empty() ? n_ff : layer_n_ff[l]; }
  int64_t n_rot_at(int64_t l) const { return layer_n_rot.empty() ? head_dim_at(l) : layer_n_rot[l]; }
  int64_t q_dim_at(int64_t l) const { return n_head * head_dim_at(l); }
  int64_t kv_dim_at(int64_t l) const { return n_head_kv_at(l) * head_dim_at(l); }
  // The widest layer's (head_dim is the largest): buffers and KV pages are sized by these.
  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const {
    if (layer_head_dim.empty() && layer_n_head_kv.empty()) return n_head_kv * head_dim;
    int64_t m = 0;
    for (int64_t l = 0; l < n_layer; ++l) m = std::max(m, kv_dim_at(l));
    return m;
  }
};

}  // namespace pyengine
