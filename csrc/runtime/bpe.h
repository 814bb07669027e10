// Byte-pair encoding as llama.cpp runs it for Gemma 4 ("gemma4" vocabularies): the merge table,
// the text preparation of one raw-text fragment, and the merging of one word.
//
// The pipeline for a fragment between special tokens (Tokenizer::EncodeBpe drives it):
//  1. PrepareGemma4Text: spaces become U+2581, then the text is decoded to code points and
//     encoded again (llama.cpp's pre-tokenizer works on code points), which replaces each
//     byte that starts no valid sequence by U+FFFD.
//  2. The text is cut into runs of newlines and runs of anything else (NextGemma4Word).
//  3. Each word is merged by BpeMerges::MergeWord; pieces that are no token fall back to
//     "<0xHH>" byte tokens (Tokenizer).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pyengine {

// Piece text -> id, or -1 when the vocabulary has no such piece.
using PieceLookup = std::function<int32_t(std::string_view)>;

// One symbol left after merging a word: its byte range in the word and its id (-1 when the
// text is no token: byte fallback follows).
struct BpePiece {
  size_t offset;
  size_t length;
  int32_t id;
};

class BpeMerges {
 public:
  BpeMerges() = default;

  // merges[rank] is "left right", split at the first space after the first byte as llama.cpp
  // splits it. Throws std::invalid_argument naming the merge when it has no such space, or a
  // side is empty or not a token of the vocabulary (`lookup`). A pair listed twice keeps its
  // first (best) rank, as llama.cpp's map does.
  BpeMerges(const std::vector<std::string>& merges, const PieceLookup& lookup);

  // The rank of merging piece `left` with piece `right`, or -1 when they never merge.
  int32_t Rank(int32_t left, int32_t right) const;

  // Splits `word` into characters (by UTF-8 lead byte) and merges adjacent symbols, lowest rank
  // first and leftmost on ties, until no adjacent pair has a rank. Appends the symbols left.
  void MergeWord(std::string_view word, const PieceLookup& lookup,
                 std::vector<BpePiece>* out) const;

  size_t size() const { return ranks_.size(); }

 private:
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // Both sides are tokens (checked when built), so a pair of ids stands for a pair of texts.
  std::unordered_map<uint64_t, int32_t> ranks_;
};

// Step 1 of the pipeline above. Sequences whose code point is past U+10FFFF (where llama.cpp
// throws out of llama_tokenize) are treated like any other invalid byte: U+FFFD per byte.
std::string PrepareGemma4Text(std::string_view fragment);

// Step 2: the word that starts at `*pos` (a run of '\n' or a run without one); advances `*pos`.
// Empty at the end of `text`.
std::string_view NextGemma4Word(std::string_view text, size_t* pos);

// llama.cpp's clean_up_tokenization_spaces for byte-pair vocabularies, applied in place to
// detokenized text: " ?", " !", " .", " ," lose their space; " ' " loses both spaces; " 's",
// " 'm", " 're", " 've" lose theirs. The passes run in llama.cpp's order and on the buffer as
// llama.cpp rewrites it, so overlapping patterns resolve the same way.
void CleanTokenizationSpaces(std::string* text);

}  // namespace pyengine
