#include "runtime/vocab.h"

#include <algorithm>

#include "core/gguf.h"

namespace pyengine {
namespace {

// "<0xHH>": SentencePiece's byte pieces.
bool IsBytePiece(const std::string& s) {
  auto hex = [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F'); };
  return s.size() == 6 && s.compare(0, 3, "<0x") == 0 && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

}  // namespace

Vocab LoadVocab(const GgufFile& f, int64_t n_embd_rows) {
  const std::string arch = f.GetString("general.architecture", "");
  const bool gemma = arch == "gemma3" || arch == "gemma3n" || arch == "gemma4";
  const std::string model = f.GetString("tokenizer.ggml.model", "");
  const GgufValue* merges = f.Find("tokenizer.ggml.merges");
  // Gemma 4's vocabulary is byte-pair. llama.cpp knows it by the name "gemma4"; Ollama's
  // converter names it "llama" but keeps the merges. llama.cpp reads such a file as
  // SentencePiece and ignores the merges, which is not the model's tokenizer, so for a gemma4
  // file the merges decide.
  const bool bpe = model == "gemma4" || (arch == "gemma4" && merges);
  if (model.empty() && !bpe) {
    f.Fail(arch == "gemma4"
               ? "the file has neither tokenizer.ggml.model nor tokenizer.ggml.merges: its "
                 "vocabulary cannot be read"
               : "the file has no tokenizer (tokenizer.ggml.model is missing)");
  }
  // Gemma 3n is SentencePiece whatever the file calls it: Ollama's load-time patch for its
  // Gemma 3n blobs sets the name to "llama" unconditionally. A byte-pair listing (merges, or
  // scores that are just the ids) cannot be read as SentencePiece, though.
  const bool spm_by_arch = arch == "gemma3n" && model != "llama" && !bpe;
  if (!bpe && model != "llama" && !spm_by_arch) {
    f.Fail("tokenizer model '" + model + "' is not supported (SentencePiece 'llama' or " +
           "byte-pair 'gemma4' only)" +
           (arch == "gemma4" ? ", and the file has no tokenizer.ggml.merges" : ""));
  }
  if (bpe && !merges) f.Fail("tokenizer model 'gemma4' has no tokenizer.ggml.merges");
  if (bpe && (merges->type != GgufType::kArray || merges->elem_type != GgufType::kString)) {
    f.Fail("tokenizer.ggml.merges must be an array of strings");
  }
  // A gemma4 file read as SentencePiece must have real scores (the checks below).
  const bool spm_scores_checked = spm_by_arch || (arch == "gemma4" && !bpe);
  if (spm_by_arch && merges) {
    f.Fail("tokenizer model '" + model + "' has tokenizer.ggml.merges: a byte-pair vocabulary, " +
           "which this engine cannot run for gemma3n (SentencePiece only)");
  }
  Vocab v;
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::kArray || tokens->elem_type != GgufType::kString) {
    f.Fail("tokenizer.ggml.tokens must be an array of strings");
  }
  const size_t n_listed = tokens->strings.size();
  if (n_listed == 0) f.Fail("tokenizer.ggml.tokens is empty");

  const GgufValue* scores = f.Find("tokenizer.ggml.scores");
  if (scores && (scores->type != GgufType::kArray || !scores->raw || scores->count != n_listed)) {
    f.Fail("tokenizer.ggml.scores must be a numeric array as long as the token list");
  }
  if (spm_scores_checked) {
    if (!scores) f.Fail("tokenizer.ggml.scores is missing: SentencePiece merges need the scores");
    bool ids = true;
    for (size_t i = 0; ids && i < n_listed; ++i) {
      ids = scores->NumberAt(i) == static_cast<double>(i);
    }
    if (ids) {
      f.Fail("tokenizer.ggml.scores are the token ids (a byte-pair listing), not SentencePiece "
             "scores; the merges cannot be recovered");
    }
  }
  std::vector<TokenType> types(n_listed, TokenType::kNormal);
  if (const GgufValue* t = f.Find("tokenizer.ggml.token_type")) {
    if (t->type != GgufType::kArray || !t->raw || t->count != n_listed) {
      f.Fail("tokenizer.ggml.token_type must be a numeric array as long as the token list");
    }
    for (size_t i = 0; i < n_listed; ++i) {
      double ty = t->NumberAt(i);
      if (ty < 0 || ty > 6) f.Fail("token " + std::to_string(i) + " has unknown type " + std::to_string(ty));
      types[i] = static_cast<TokenType>(static_cast<int32_t>(ty));
    }
  }

  // Ollama's Gemma 3 blobs list more tokens than token_embd has rows: multimodal tokens such as
  // <image_soft_token> that only the vision tower feeds. The model can neither embed nor
  // produce them, so the vocabulary stops at the embedding's rows (as Ollama's patch for
  // llama.cpp does). A normal text piece past the rows would be a broken file, not that.
  size_t n = n_listed;
  if (n_embd_rows > 0 && static_cast<uint64_t>(n_embd_rows) < n_listed) {
    n = static_cast<size_t>(n_embd_rows);
    for (size_t i = n; i < n_listed; ++i) {
      if (types[i] == TokenType::kNormal || types[i] == TokenType::kByte) {
        f.Fail("tokenizer.ggml.tokens lists " + std::to_string(n_listed) +
               " tokens but the token embedding has " + std::to_string(n) + " rows, and token " +
               std::to_string(i) + " past them is a text piece");
      }
    }
  }
  v.tokens.reserve(n);
  for (size_t i = 0; i < n; ++i) v.tokens.emplace_back(tokens->strings[i]);
  v.scores.assign(n, 0.f);
  if (scores) {
    for (size_t i = 0; i < n; ++i) v.scores[i] = static_cast<float>(scores->NumberAt(i));
  }
  v.types.assign(types.begin(), types.begin() + static_cast<std::ptrdiff_t>(n));
  if (spm_by_arch) {
    // Ollama's patch also retypes the byte pieces of these files as bytes.
    for (size_t i = 0; i < n; ++i) {
      if (IsBytePiece(v.tokens[i])) v.types[i] = TokenType::kByte;
    }
  }

  if (bpe) {
    v.kind = VocabKind::kGemma4Bpe;
    v.merges.reserve(merges->strings.size());
    for (std::string_view m : merges->strings) v.merges.emplace_back(m);
  }

  auto id = [&](const char* key, int64_t fallback) -> int32_t {
    int64_t x = f.GetInt(key, fallback);
    if (x < -1 || x >= static_cast<int64_t>(n)) f.Fail(std::string(key) + " = " + std::to_string(x) + " is not a token id");
    return static_cast<int32_t>(x);
  };
  // SentencePiece files default to llama.cpp's ids for it; Gemma 4's have no defaults.
  v.bos_id = id("tokenizer.ggml.bos_token_id", bpe ? -1 : 1);
  v.eos_id = id("tokenizer.ggml.eos_token_id", bpe ? -1 : 2);
  v.unk_id = id("tokenizer.ggml.unknown_token_id", bpe ? -1 : 0);
  v.pad_id = id("tokenizer.ggml.padding_token_id", -1);
  // llama.cpp overrides add_bos_token=false for Gemma 4: its prompts always start with bos.
  v.add_bos = bpe || f.GetBool("tokenizer.ggml.add_bos_token", true);
  v.add_eos = f.GetBool("tokenizer.ggml.add_eos_token", false);
  // llama.cpp assumes a space prefix when the key is missing, but Gemma's SentencePiece model
  // has none: llama.cpp's converter always writes false for it, and Ollama's writes no key.
  v.add_space_prefix = f.GetBool("tokenizer.ggml.add_space_prefix", !gemma);

  // End of generation: eos, explicit eot/eom ids, the eos list Ollama's converter writes, and
  // the markers llama.cpp recognises by their text whatever their type: <end_of_turn>
  // (Gemma 3); <eos>, <turn|> and <|tool_response> (Gemma 4).
  auto add_eog = [&](int32_t t) {
    if (t >= 0 && std::find(v.eog_ids.begin(), v.eog_ids.end(), t) == v.eog_ids.end()) v.eog_ids.push_back(t);
  };
  add_eog(v.eos_id);
  add_eog(id("tokenizer.ggml.eot_token_id", -1));
  add_eog(id("tokenizer.ggml.eom_token_id", -1));
  if (const GgufValue* eos = f.Find("tokenizer.ggml.eos_token_ids")) {
    if (eos->type != GgufType::kArray || !eos->raw || eos->elem_type == GgufType::kF32 ||
        eos->elem_type == GgufType::kF64 || eos->elem_type == GgufType::kBool) {
      f.Fail("tokenizer.ggml.eos_token_ids must be an array of integers");
    }
    for (uint64_t k = 0; k < eos->count; ++k) {
      const int64_t x = eos->IntegerAt(k);
      if (x < 0 || x >= static_cast<int64_t>(n)) {
        f.Fail("tokenizer.ggml.eos_token_ids holds " + std::to_string(x) + ", not a token id");
      }
      add_eog(static_cast<int32_t>(x));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = v.tokens[i];
    if (t == "<end_of_turn>" || (v.types[i] == TokenType::kControl && t == "<eot>") ||
        (bpe && (t == "<eos>" || t == "<turn|>" || t == "<|tool_response>"))) {
      add_eog(static_cast<int32_t>(i));
    }
  }
  return v;
}

}  // namespace pyengine
