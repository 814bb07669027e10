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

// How text becomes pieces: SentencePiece's score-ordered merges (tokenizer.ggml.model "llama"),
// or Gemma 4's byte-pair merges by rank (tokenizer.ggml.model "gemma4").
enum class VocabKind : int32_t {
  kSpm = 0,
  kGemma4Bpe = 1,
};

struct Vocab {
  VocabKind kind = VocabKind::kSpm;
  std::vector<std::string> tokens;  // [n_vocab] raw piece text (U+2581 stands for a space)
  std::vector<float> scores;        // [n_vocab] merge priority: higher merges first
  std::vector<TokenType> types;     // [n_vocab]
  std::vector<std::string> merges;  // [n_merges] kGemma4Bpe only: "left right", rank = index
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  std::vector<int32_t> eog_ids;  // end-of-generation ids: eos, eot, <end_of_turn>, <turn|>...
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = false;
};

// Reads tokenizer.ggml.* from the file. Throws GgufError (naming the file) when the
// vocabulary is missing, is of an unsupported kind, or its arrays disagree in length.
// The kind: "gemma4" is Gemma 4's byte-pair vocabulary, and so is any gemma4 file that lists
// tokenizer.ggml.merges whatever its model name (Ollama's converter writes "llama" there).
// "llama" is SentencePiece, and so is any name for gemma3n (Ollama's blobs).
// Tokens listed past `n_embd_rows`, the rows of the model's token embedding (config.n_vocab),
// are left out (Ollama's multimodal tokens): the vocabulary never exceeds what the model can
// embed. A merge is not checked here but when a Tokenizer is built from the Vocab.
// Gemma files without tokenizer.ggml.add_space_prefix get none (Gemma's SentencePiece model
// adds no dummy prefix); other files get llama.cpp's default, a prefix.
// Gemma 4 vocabularies always add bos (llama.cpp overrides add_bos_token=false for them) and
// have no default special ids: bos/eos/unk/pad come from the file or are none.
Vocab LoadVocab(const GgufFile& file, int64_t n_embd_rows);

}  // namespace pyengine
