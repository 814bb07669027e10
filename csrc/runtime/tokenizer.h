// Tokenizer: llama.cpp-compatible encoding and decoding over a Vocab: SentencePiece (SPM), or
// Gemma 4's byte-pair encoding (Vocab::kind, see bpe.h).
//
// The reference is llama.cpp (llama_vocab::tokenize / token_to_piece / detokenize): the same
// input gives the same ids and the same bytes, including its quirks (see tokenizer.cc).
// A Tokenizer is immutable after construction; all methods are safe to call from many threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/bpe.h"
#include "runtime/vocab.h"

namespace pyengine {

class Tokenizer {
 public:
  // Validates `vocab` and throws std::invalid_argument naming the problem when the arrays
  // disagree in length, a special id is out of range, a piece is duplicated (llama.cpp
  // refuses such a vocabulary), add_bos/add_eos is set without the matching id, or a byte-pair
  // merge is malformed (see BpeMerges). Empty pieces are renamed "[EMPTY_<id>]" as llama.cpp
  // does.
  explicit Tokenizer(Vocab vocab);

  // Text -> ids exactly as llama.cpp's llama_tokenize does: special tokens (control/
  // user-defined) matched first when parse_special; user-defined tokens are matched even when
  // it is off; then each stretch of text between them is encoded alone: spaces -> U+2581,
  // score-ordered bigram merges (SPM) or rank-ordered merges per line (Gemma 4), byte
  // fallback. add_bos is llama.cpp's add_special: it prepends bos when the vocab says add_bos
  // (always for Gemma 4) and appends eos when the vocab says add_eos.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special) const;

  // The raw bytes of one token (may be a partial UTF-8 sequence, e.g. a byte token).
  // Control and unknown tokens give "" unless `special`. Throws std::out_of_range for a bad id.
  std::string Piece(int32_t id, bool special) const;

  // As Piece, without a copy; the view lives as long as the Tokenizer.
  std::string_view PieceView(int32_t id, bool special) const;

  // Concatenated pieces of `ids`, as llama_detokenize(remove_special=false,
  // unparse_special=special): with add_space_prefix the first piece loses one leading space;
  // Gemma 4 text then has its tokenization spaces cleaned up (CleanTokenizationSpaces).
  std::string Decode(const std::vector<int32_t>& ids, bool special) const;

  // The id whose piece text is exactly `text` (any token type), or -1.
  int32_t TokenId(std::string_view text) const;

  const Vocab& vocab() const { return vocab_; }
  int32_t n_vocab() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  // True for eos and the vocab's other end-of-generation ids.
  bool IsEog(int32_t id) const;

 private:
  // A slice of the input text, or a special token matched in it.
  struct Fragment {
    int32_t token;  // -1 for raw text
    size_t offset;  // raw text only: byte range in the input
    size_t length;
  };

  // A node of the special-token trie, children stored contiguously (CSR) in trie_edges_.
  struct TrieNode {
    uint32_t first_edge = 0;
    uint32_t n_edges = 0;
    int32_t special = -1;  // rank (index into special_ids_) of the token ending here, or -1
    uint32_t depth = 0;    // bytes from the root
    uint32_t shorter = 0;  // nearest proper ancestor where a special ends, 0 when none
  };
  struct TrieEdge {
    uint8_t byte;
    uint32_t node;
  };

  void BuildPieceIndex();
  void BuildAttributes();
  void BuildSpecials();
  void BuildPieces();

  // Splits `text` at special tokens in llama.cpp's order; appends the fragments to `out`.
  void Partition(std::string_view text, bool parse_special, std::vector<Fragment>* out) const;
  // SPM bigram merging of one raw-text fragment (unescaped; prefix_space prepends U+2581).
  void EncodeSpm(std::string_view text, bool prefix_space, std::vector<int32_t>* out) const;
  // Gemma 4 byte-pair encoding of one raw-text fragment (bpe.h has the steps).
  void EncodeBpe(std::string_view text, std::vector<int32_t>* out) const;
  int32_t ByteToken(uint8_t byte) const;

  Vocab vocab_;
  std::vector<uint16_t> attrs_;  // [n_vocab] llama.cpp token attribute bits (kAttr* in .cc)
  size_t max_piece_len_ = 0;

  // Open-addressing hash index: piece text -> id. Stores ids only (texts live in vocab_),
  // so copies of a Tokenizer stay valid. Size is a power of two, at most half full.
  struct Slot {
    uint32_t hash;
    int32_t id;  // -1 when empty
  };
  std::vector<Slot> slots_;

  int32_t byte_ids_[256];  // byte -> its fallback token, or -1 when the vocab has none

  BpeMerges merges_;  // Gemma 4 only

  // Special tokens (control, user-defined, unknown) in llama.cpp's matching order: longest
  // first. special_ids_[rank] is the id; a trie over their texts finds all matches.
  std::vector<int32_t> special_ids_;
  std::vector<TrieNode> trie_nodes_;  // [0] is the root
  std::vector<TrieEdge> trie_edges_;  // each node's edges sorted by byte
  uint32_t root_child_[256];          // first byte -> node, 0 when no special starts so
  bool has_user_defined_special_ = false;

  // Every token's llama.cpp piece as rendered with special=true, back to back.
  std::string piece_pool_;
  std::vector<uint32_t> piece_offsets_;  // [n_vocab + 1]
};

// Turns a stream of token ids into text that never ends in half a UTF-8 character:
// Push returns only complete characters; the rest waits for the next token (or Flush).
// Bytes that can never form a character become U+FFFD at once, so every returned string
// is valid UTF-8 and the concatenation of all outputs equals the decoded text read with
// Python's errors="replace". For Gemma 4 that is the pieces joined, before Decode's clean-up of
// spaces (which needs the text that follows; llama.cpp streams pieces unchanged too).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool special = false)
      : tok_(tok), special_(special) {}
  std::string Push(int32_t id);
  std::string Flush();  // whatever is pending, invalid bytes replaced by U+FFFD

 private:
  const Tokenizer& tok_;
  bool special_;
  bool first_ = true;  // the first piece may lose a leading space (add_space_prefix)
  std::string pending_;
};

}  // namespace pyengine
