#include "runtime/vocab.h"

#include <algorithm>

#include "core/gguf.h"

namespace pyengine {

Vocab LoadVocab(const GgufFile& f) {
  const std::string model = f.GetString("tokenizer.ggml.model", "");
  if (model.empty()) f.Fail("the file has no tokenizer (tokenizer.ggml.model is missing)");
  if (model != "llama") {
    f.Fail("tokenizer model '" + model + "' is not supported (SentencePiece 'llama' only)");
  }
  Vocab v;
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::kArray || tokens->elem_type != GgufType::kString) {
    f.Fail("tokenizer.ggml.tokens must be an array of strings");
  }
  const size_t n = tokens->strings.size();
  if (n == 0) f.Fail("tokenizer.ggml.tokens is empty");
  v.tokens.reserve(n);
  for (std::string_view s : tokens->strings) v.tokens.emplace_back(s);

  v.scores.assign(n, 0.f);
  if (const GgufValue* s = f.Find("tokenizer.ggml.scores")) {
    if (s->type != GgufType::kArray || !s->raw || s->count != n) {
      f.Fail("tokenizer.ggml.scores must be a numeric array as long as the token list");
    }
    for (size_t i = 0; i < n; ++i) v.scores[i] = static_cast<float>(s->NumberAt(i));
  }
  v.types.assign(n, TokenType::kNormal);
  if (const GgufValue* t = f.Find("tokenizer.ggml.token_type")) {
    if (t->type != GgufType::kArray || !t->raw || t->count != n) {
      f.Fail("tokenizer.ggml.token_type must be a numeric array as long as the token list");
    }
    for (size_t i = 0; i < n; ++i) {
      double ty = t->NumberAt(i);
      if (ty < 0 || ty > 6) f.Fail("token " + std::to_string(i) + " has unknown type " + std::to_string(ty));
      v.types[i] = static_cast<TokenType>(static_cast<int32_t>(ty));
    }
  }
  auto id = [&](const char* key, int64_t fallback) -> int32_t {
    int64_t x = f.GetInt(key, fallback);
    if (x < -1 || x >= static_cast<int64_t>(n)) f.Fail(std::string(key) + " = " + std::to_string(x) + " is not a token id");
    return static_cast<int32_t>(x);
  };
  v.bos_id = id("tokenizer.ggml.bos_token_id", 1);
  v.eos_id = id("tokenizer.ggml.eos_token_id", 2);
  v.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
  v.pad_id = id("tokenizer.ggml.padding_token_id", -1);
  v.add_bos = f.GetBool("tokenizer.ggml.add_bos_token", true);
  v.add_eos = f.GetBool("tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = f.GetBool("tokenizer.ggml.add_space_prefix", true);

  // End of generation: eos, explicit eot/eom ids, and the end-of-turn markers chat models use.
  auto add_eog = [&](int32_t t) {
    if (t >= 0 && std::find(v.eog_ids.begin(), v.eog_ids.end(), t) == v.eog_ids.end()) v.eog_ids.push_back(t);
  };
  add_eog(v.eos_id);
  add_eog(id("tokenizer.ggml.eot_token_id", -1));
  add_eog(id("tokenizer.ggml.eom_token_id", -1));
  for (size_t i = 0; i < n; ++i) {
    if (v.types[i] == TokenType::kControl && (v.tokens[i] == "<end_of_turn>" || v.tokens[i] == "<eot>")) {
      add_eog(static_cast<int32_t>(i));
    }
  }
  return v;
}

}  // namespace pyengine
