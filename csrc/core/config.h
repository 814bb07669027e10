// ModelConfig: the plain hyper-parameters of a model, read once from GGUF metadata (by
// LoadConfig in model/architecture.h, with each architecture's own rules).
#pragma once

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
  int64_t n_ff = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;    // key_length == value_length
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

  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
};

}  // namespace pyengine
