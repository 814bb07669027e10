// Vocab: the tokenizer's inert data, read once from GGUF metadata (tokenizer.ggml.*).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pyengine {

class GgufFile;

// SentencePiece token types as GGUF stores them in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  std::vector<std::string> tokens;  // [n_vocab] raw piece text (U+2581 stands for a space)
  std::vector<float> scores;        // [n_vocab] merge priority: higher merges first
  std::vector<TokenType> types;     // [n_vocab]
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  std::vector<int32_t> eog_ids;  // end-of-generation ids: eos, <end_of_turn>, eot if present
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = false;
};

// Reads tokenizer.ggml.* from the file. Throws GgufError (naming the file) when the
// vocabulary is missing, is not SentencePiece ("llama"; any name for gemma3n, as in Ollama's
// blobs), or its arrays disagree in length. Tokens listed past `n_embd_rows`, the rows of the
// model's token embedding (config.n_vocab), are left out (Ollama's multimodal tokens): the
// vocabulary never exceeds what the model can embed.
// Gemma files without tokenizer.ggml.add_space_prefix get none (Gemma's SentencePiece model
// adds no dummy prefix); other files get llama.cpp's default, a prefix.
Vocab LoadVocab(const GgufFile& file, int64_t n_embd_rows);

}  // namespace pyengine
