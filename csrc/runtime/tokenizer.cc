// SentencePiece tokenizer that reproduces llama.cpp's SPM path token for token.
//
// llama.cpp is the oracle, so its behaviour is copied even where it departs from the
// sentencepiece library. The departures that matter:
//  * Token "attributes" are derived from the GGUF token types and then patched by piece
//    text (e.g. "<end_of_turn>" or "</s>" always count as control tokens). Matching and
//    rendering follow the patched attributes, never the raw types.
//  * Special-token splitting runs before anything else. Control and unknown tokens are
//    matched only with parse_special; user-defined tokens are matched always. Specials are
//    tried longest first; each one takes its leftmost non-overlapping occurrences in the
//    text that earlier (longer) specials left over.
//  * Each text fragment between specials is encoded on its own. With add_space_prefix a
//    space is prepended to the first fragment and to every fragment that follows a special.
//  * Only ' ' becomes U+2581; tabs and newlines stay as they are.
//  * Text is split into "characters" by the lead byte alone (unicode_len_utf8): a lead byte
//    swallows the next 1-3 bytes whatever they are, so invalid UTF-8 never causes an error,
//    it just falls back to byte tokens.
//  * Bigram merges consider every piece in the vocab, whatever its type, and pick the
//    highest score first, the leftmost pair on ties.
//  * Byte fallback looks up "<0xHH>" by text (any type), then the one-byte piece.
//
// Gemma 4's byte-pair vocabularies share the special-token split, the token attributes and the
// rendering of pieces; only the encoding of text fragments (EncodeBpe, bpe.h) differs, plus:
//  * No space prefix, and bos is always added.
//  * Byte fallback uses "<0xHH>" only; a byte without such a token is dropped (no unk).
//  * Decode cleans up tokenization spaces (" ." -> "."), as llama_detokenize does for every
//    byte-pair vocabulary.
#include "runtime/tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "runtime/merge_pairs.h"

namespace pyengine {
namespace {

// llama.cpp's llama_token_attr bits (only those that change tokenization or rendering).
constexpr uint16_t kAttrUnknown = 1 << 0;
constexpr uint16_t kAttrUnused = 1 << 1;
constexpr uint16_t kAttrNormal = 1 << 2;
constexpr uint16_t kAttrControl = 1 << 3;
constexpr uint16_t kAttrUserDefined = 1 << 4;
constexpr uint16_t kAttrByte = 1 << 5;

// Tokens that llama.cpp hides from non-special output and only matches with parse_special.
constexpr uint16_t kAttrHidden = kAttrUnknown | kAttrControl;
// Tokens that llama.cpp's special-token splitter looks for.
constexpr uint16_t kAttrSpecial = kAttrUnknown | kAttrControl | kAttrUserDefined;

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's space
constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

// End-of-generation markers that llama.cpp's loader recognises by name. It forces each one
// present to be a control token, whatever its GGUF type.
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[",
};

// Fill-in-the-middle markers (prefix, suffix, middle, pad, repo, file separator) that the
// loader also forces to be control tokens when the GGUF names no FIM token by id, which
// Gemma conversions never do. (The loader's end-of-turn/end-of-message name lists are
// subsets of kEogTexts.)
constexpr std::string_view kFimTexts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    "<|file_sep|>",
};

// Piece texts llama.cpp always renders verbatim (it resets them to user-defined).
constexpr std::string_view kForcedUserDefinedTexts[] = {
    "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>",
};

uint32_t HashText(std::string_view text) {
  const uint64_t h = std::hash<std::string_view>{}(text);
  return static_cast<uint32_t>(h ^ (h >> 32));
}

// Classifies the UTF-8 sequence that starts at s[i] (strict RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF). Returns its length when it is complete and valid;
// 0 when it is a valid prefix cut off by the end of `s`; -k when its first k bytes are the
// maximal invalid subpart (one U+FFFD each, as Python's decoder with errors="replace").
int Utf8Step(std::string_view s, size_t i) {
  const uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if (b == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (b >= 0xE1 && b <= 0xEF) {
    need = 2;
  } else if (b == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (b == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else if (b >= 0xF1 && b <= 0xF3) {
    need = 3;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    const uint8_t c = static_cast<uint8_t>(s[i + k]);
    if (c < lo || c > hi) return -k;
    lo = 0x80;
    hi = 0xBF;
  }
  return need + 1;
}

// Appends the complete characters of `s` to `out` (invalid bytes as U+FFFD) and returns how
// many bytes were consumed; an incomplete tail is left unless `final`.
size_t AppendValidUtf8(std::string_view s, bool final, std::string* out) {
  size_t i = 0;
  while (i < s.size()) {
    const int step = Utf8Step(s, i);
    if (step > 0) {
      out->append(s.data() + i, step);
      i += step;
    } else if (step < 0) {
      out->append(kReplacement);
      i += -step;
    } else if (final) {
      out->append(kReplacement);  // a truncated but so far valid sequence is one subpart
      i = s.size();
    } else {
      break;
    }
  }
  return i;
}

}  // namespace

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  const size_t n = vocab_.tokens.size();
  if (n == 0) throw std::invalid_argument("tokenizer: the vocabulary is empty");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("tokenizer: the vocabulary has more than 2^31-1 tokens");
  }
  if (vocab_.scores.size() != n) {
    throw std::invalid_argument("tokenizer: " + std::to_string(vocab_.scores.size()) +
                                " scores for " + std::to_string(n) + " tokens");
  }
  if (vocab_.types.size() != n) {
    throw std::invalid_argument("tokenizer: " + std::to_string(vocab_.types.size()) +
                                " token types for " + std::to_string(n) + " tokens");
  }
  auto check_id = [&](const char* what, int32_t id, bool allow_none) {
    if ((allow_none && id == -1) || (id >= 0 && static_cast<size_t>(id) < n)) return;
    throw std::invalid_argument(std::string("tokenizer: ") + what + " = " + std::to_string(id) +
                                " is not a token id (vocabulary of " + std::to_string(n) + ")");
  };
  check_id("bos_id", vocab_.bos_id, true);
  check_id("eos_id", vocab_.eos_id, true);
  check_id("unk_id", vocab_.unk_id, true);
  check_id("pad_id", vocab_.pad_id, true);
  for (int32_t id : vocab_.eog_ids) check_id("an end-of-generation id", id, false);
  // llama.cpp asserts on these when it adds the token; fail early instead.
  if (vocab_.add_bos && vocab_.bos_id < 0) {
    throw std::invalid_argument(
        std::string("tokenizer: add_bos is set but the vocabulary has no bos_id") +
        (vocab_.kind == VocabKind::kGemma4Bpe ? " (Gemma 4 always adds bos)" : ""));
  }
  if (vocab_.add_eos && vocab_.eos_id < 0) {
    throw std::invalid_argument("tokenizer: add_eos is set but the vocabulary has no eos_id");
  }
  // llama.cpp cannot hold an empty piece and renames it; follow suit so that ids, matching
  // and rendering agree.
  for (size_t i = 0; i < n; ++i) {
    if (vocab_.tokens[i].empty()) vocab_.tokens[i] = "[EMPTY_" + std::to_string(i) + "]";
  }

  BuildPieceIndex();
  if (vocab_.kind == VocabKind::kGemma4Bpe) {
    merges_ = BpeMerges(vocab_.merges, [this](std::string_view text) { return TokenId(text); });
  }
  BuildAttributes();
  BuildSpecials();
  BuildPieces();
}

void Tokenizer::BuildPieceIndex() {
  const size_t n = vocab_.tokens.size();
  size_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;
  slots_.assign(capacity, Slot{0, -1});
  const size_t mask = capacity - 1;
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = vocab_.tokens[i];
    max_piece_len_ = std::max(max_piece_len_, text.size());
    const uint32_t h = HashText(text);
    size_t s = h & mask;
    while (slots_[s].id >= 0) {
      if (slots_[s].hash == h && vocab_.tokens[slots_[s].id] == text) {
        // llama.cpp maps text -> id and asserts that the map is as large as the list.
        throw std::invalid_argument("tokenizer: tokens " + std::to_string(slots_[s].id) + " and " +
                                    std::to_string(i) + " have the same text");
      }
      s = (s + 1) & mask;
    }
    slots_[s] = Slot{h, static_cast<int32_t>(i)};
  }

  // llama.cpp spells byte tokens with upper-case hex and accepts any token type there.
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    int32_t id = TokenId(std::string_view(name, 6));
    // Its second choice for SentencePiece is the raw one-byte piece (built as a C string, so
    // never for NUL); Gemma 4's byte-pair path has none.
    if (id < 0 && b != 0 && vocab_.kind == VocabKind::kSpm) {
      const char raw = static_cast<char>(b);
      id = TokenId(std::string_view(&raw, 1));
    }
    byte_ids_[b] = id;
  }
}

int32_t Tokenizer::TokenId(std::string_view text) const {
  if (text.size() > max_piece_len_) return -1;
  const uint32_t h = HashText(text);
  const size_t mask = slots_.size() - 1;
  for (size_t s = h & mask;; s = (s + 1) & mask) {
    const Slot& slot = slots_[s];
    if (slot.id < 0) return -1;
    if (slot.hash == h && vocab_.tokens[slot.id] == text) return slot.id;
  }
}

void Tokenizer::BuildAttributes() {
  const size_t n = vocab_.tokens.size();
  attrs_.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    switch (vocab_.types[i]) {
      case TokenType::kUnknown: attrs_[i] = kAttrUnknown; break;
      case TokenType::kUnused: attrs_[i] = kAttrUnused; break;
      case TokenType::kNormal: attrs_[i] = kAttrNormal; break;
      case TokenType::kControl: attrs_[i] = kAttrControl; break;
      case TokenType::kUserDefined: attrs_[i] = kAttrUserDefined; break;
      case TokenType::kByte: attrs_[i] = kAttrByte; break;
      default: attrs_[i] = 0; break;  // undefined (or out-of-range) types render as nothing
    }
  }
  // The loader's fix-ups, in its order. (It also flags control tokens named "unused" as
  // unused, which changes neither matching nor rendering, so that step is left out.)
  auto force_control = [&](std::string_view text) {
    const int32_t id = TokenId(text);
    if (id >= 0) attrs_[id] |= kAttrControl;
  };
  for (std::string_view text : kFimTexts) force_control(text);
  for (std::string_view text : kEogTexts) force_control(text);
  for (std::string_view text : kForcedUserDefinedTexts) {
    const int32_t id = TokenId(text);
    if (id >= 0) attrs_[id] = kAttrUserDefined;
  }
  // The end-of-generation set as llama.cpp sees it: named markers, eos, and the ids the
  // GGUF declares (eot/eom are in vocab_.eog_ids).
  auto is_eog = [&](int32_t id) {
    if (id < 0) return false;
    if (id == vocab_.eos_id) return true;
    if (std::find(vocab_.eog_ids.begin(), vocab_.eog_ids.end(), id) != vocab_.eog_ids.end()) {
      return true;
    }
    const std::string& text = vocab_.tokens[id];
    return std::find(std::begin(kEogTexts), std::end(kEogTexts), text) != std::end(kEogTexts);
  };
  // Harmony-style vocabularies: "<|end|>" ends a message, not the generation, when the
  // vocabulary also has the return/call (or call/flush) markers; it is then rendered verbatim.
  {
    const int32_t end = TokenId("<|end|>");
    if (end >= 0 && is_eog(end)) {
      auto eog_text = [&](std::string_view t) {
        const int32_t id = TokenId(t);
        return id >= 0 && is_eog(id);
      };
      const bool has_return = eog_text("<|return|>");
      const bool has_call = eog_text("<|call|>") || eog_text("<|calls|>");
      const bool has_flush = eog_text("<|flush|>");
      if ((has_return && has_call) || (has_call && has_flush)) attrs_[end] = kAttrUserDefined;
    }
  }
  // Vocabularies whose "</s>" is an ordinary piece (marked by another end token).
  {
    const int32_t s = TokenId("</s>");
    if (s >= 0 && is_eog(s)) {
      const int32_t tool = TokenId("<|tool_response>");
      const int32_t plamo = TokenId("<|plamo:eos|>");
      if ((tool >= 0 && is_eog(tool)) || (plamo >= 0 && is_eog(plamo))) attrs_[s] = kAttrNormal;
    }
  }
}

void Tokenizer::BuildSpecials() {
  const int32_t n = n_vocab();
  for (int32_t id = 0; id < n; ++id) {
    if (attrs_[id] & kAttrSpecial) special_ids_.push_back(id);
  }
  // Same input order and the same (unstable) sort as llama.cpp, so that specials of equal
  // length are tried in the same order too.
  std::sort(special_ids_.begin(), special_ids_.end(), [&](int32_t a, int32_t b) {
    return vocab_.tokens[a].size() > vocab_.tokens[b].size();
  });

  // Build the trie with per-node child lists, then flatten it into sorted CSR edges.
  std::vector<std::vector<std::pair<uint8_t, uint32_t>>> children(1);
  std::vector<int32_t> terminal(1, -1);
  for (size_t rank = 0; rank < special_ids_.size(); ++rank) {
    const int32_t id = special_ids_[rank];
    if (!(attrs_[id] & kAttrHidden)) has_user_defined_special_ = true;
    uint32_t node = 0;
    for (char c : vocab_.tokens[id]) {
      const uint8_t byte = static_cast<uint8_t>(c);
      auto& kids = children[node];
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& e) { return e.first == byte; });
      if (it != kids.end()) {
        node = it->second;
      } else {
        const uint32_t child = static_cast<uint32_t>(children.size());
        kids.emplace_back(byte, child);
        children.emplace_back();
        terminal.push_back(-1);
        node = child;
      }
    }
    terminal[node] = static_cast<int32_t>(rank);  // texts are unique, so this is set once
  }
  trie_nodes_.assign(children.size(), TrieNode{});
  trie_edges_.clear();
  // Node ids grow along every path, so parents are final before their children are visited.
  for (size_t i = 0; i < children.size(); ++i) {
    auto& kids = children[i];
    std::sort(kids.begin(), kids.end());
    TrieNode& node = trie_nodes_[i];
    node.first_edge = static_cast<uint32_t>(trie_edges_.size());
    node.n_edges = static_cast<uint32_t>(kids.size());
    node.special = terminal[i];
    for (const auto& [byte, child] : kids) {
      trie_edges_.push_back(TrieEdge{byte, child});
      trie_nodes_[child].depth = node.depth + 1;
      trie_nodes_[child].shorter = node.special >= 0 ? static_cast<uint32_t>(i) : node.shorter;
    }
  }
  std::fill(std::begin(root_child_), std::end(root_child_), 0u);
  for (const auto& [byte, child] : children[0]) root_child_[byte] = child;
}

void Tokenizer::BuildPieces() {
  const size_t n = vocab_.tokens.size();
  piece_offsets_.assign(n + 1, 0);
  std::string piece;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t attr = attrs_[i];
    const std::string& text = vocab_.tokens[i];
    piece.clear();
    if (attr & kAttrSpecial) {
      piece = text;  // control, unknown and user-defined pieces are shown verbatim
    } else if (attr & kAttrNormal) {
      for (size_t p = 0; p < text.size();) {
        if (text.compare(p, kSpaceMark.size(), kSpaceMark) == 0) {
          piece += ' ';
          p += kSpaceMark.size();
        } else {
          piece += text[p++];
        }
      }
    } else if (attr & kAttrByte) {
      // llama.cpp reads the two characters after "<0x" with strtol, whatever they are.
      if (text.size() < 3) {
        throw std::invalid_argument("tokenizer: byte token " + std::to_string(i) +
                                    " is not of the form <0xHH>");
      }
      const std::string hex = text.substr(3, 2);
      piece += static_cast<char>(static_cast<uint8_t>(std::strtol(hex.c_str(), nullptr, 16)));
    }
    // Unused and undefined tokens render as nothing, even with special.
    piece_pool_ += piece;
    if (piece_pool_.size() > std::numeric_limits<uint32_t>::max()) {
      throw std::invalid_argument("tokenizer: the vocabulary's pieces exceed 4 GiB");
    }
    piece_offsets_[i + 1] = static_cast<uint32_t>(piece_pool_.size());
  }
}

int32_t Tokenizer::ByteToken(uint8_t byte) const {
  const int32_t id = byte_ids_[byte];
  if (id >= 0) return id;
  // llama.cpp aborts here (an uncaught lookup failure). Emitting unk, as sentencepiece
  // does, keeps such a vocabulary usable.
  if (vocab_.unk_id >= 0) return vocab_.unk_id;
  throw std::runtime_error("tokenizer: the vocabulary has no token for byte " +
                           std::to_string(byte) + " and no unknown token");
}

void Tokenizer::Partition(std::string_view text, bool parse_special,
                          std::vector<Fragment>* out) const {
  if (special_ids_.empty() || (!parse_special && !has_user_defined_special_)) {
    out->push_back(Fragment{-1, 0, text.size()});
    return;
  }
  auto enabled = [&](uint32_t node) {
    const int32_t rank = trie_nodes_[node].special;
    return rank >= 0 && (parse_special || !(attrs_[special_ids_[rank]] & kAttrHidden));
  };

  // llama.cpp takes the specials one at a time, longest first, and splits every still
  // unclaimed stretch of text at that special's leftmost non-overlapping occurrences. The
  // result is the same as visiting all occurrences in (rank, position) order and keeping each
  // one that overlaps nothing kept before. Doing that literally would cost
  // O(n_specials * text) like llama.cpp, or list every occurrence (31 per byte in a run of
  // newlines with Gemma's newline tokens). Instead a heap holds one candidate per position,
  // its longest untried match; a rejected candidate is replaced by the longest shorter match
  // at the same position that could still fit, or dropped when its position is already
  // covered (no match starting there can ever be kept).
  struct Candidate {
    uint32_t rank;
    uint32_t node;
    size_t pos;
  };
  struct Later {  // min-heap on (rank, pos)
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
  };
  std::vector<Candidate> initial;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    // Walk the trie as far as the text follows it, remembering the deepest usable match.
    // Plain text stops at the root table, so this costs one lookup per byte.
    uint32_t node = root_child_[static_cast<uint8_t>(text[pos])];
    uint32_t best = 0;
    for (size_t q = pos + 1; node != 0; ++q) {
      const TrieNode& tn = trie_nodes_[node];
      if (enabled(node)) best = node;
      if (q == text.size() || tn.n_edges == 0) break;
      const uint8_t byte = static_cast<uint8_t>(text[q]);
      const TrieEdge* first = trie_edges_.data() + tn.first_edge;
      const TrieEdge* last = first + tn.n_edges;
      const TrieEdge* e = std::lower_bound(
          first, last, byte, [](const TrieEdge& edge, uint8_t b) { return edge.byte < b; });
      node = (e != last && e->byte == byte) ? e->node : 0;
    }
    if (best != 0) {
      initial.push_back(
          Candidate{static_cast<uint32_t>(trie_nodes_[best].special), best, pos});
    }
  }
  if (initial.empty()) {
    out->push_back(Fragment{-1, 0, text.size()});
    return;
  }

  std::priority_queue<Candidate, std::vector<Candidate>, Later> heap(Later{}, std::move(initial));
  std::map<size_t, std::pair<size_t, int32_t>> kept;  // start -> (end, token id)
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const size_t end = c.pos + trie_nodes_[c.node].depth;
    auto next = kept.lower_bound(c.pos);  // first kept match starting at or after pos
    if (next != kept.begin() && std::prev(next)->second.first > c.pos) continue;  // covered
    if (next != kept.end() && next->first < end) {
      if (next->first == c.pos) continue;  // covered
      // Only a match ending by next->first can still be kept at this position.
      const size_t room = next->first - c.pos;
      uint32_t node = trie_nodes_[c.node].shorter;
      while (node != 0 && (trie_nodes_[node].depth > room || !enabled(node))) {
        node = trie_nodes_[node].shorter;
      }
      if (node != 0) {
        heap.push(Candidate{static_cast<uint32_t>(trie_nodes_[node].special), node, c.pos});
      }
      continue;
    }
    kept.emplace_hint(next, c.pos, std::make_pair(end, special_ids_[c.rank]));
  }

  size_t cursor = 0;
  for (const auto& [start, end_id] : kept) {
    if (start > cursor) out->push_back(Fragment{-1, cursor, start - cursor});
    out->push_back(Fragment{end_id.second, 0, 0});
    cursor = end_id.first;
  }
  if (cursor < text.size()) out->push_back(Fragment{-1, cursor, text.size() - cursor});
}

void Tokenizer::EncodeSpm(std::string_view raw, bool prefix_space,
                          std::vector<int32_t>* out) const {
  // Escape: ' ' -> U+2581 (nothing else is normalized).
  const size_t n_spaces = static_cast<size_t>(std::count(raw.begin(), raw.end(), ' '));
  std::string text;
  text.reserve(raw.size() + (n_spaces + 1) * (kSpaceMark.size() - 1) + 1);
  if (prefix_space) text.append(kSpaceMark);
  for (char c : raw) {
    if (c == ' ') {
      text.append(kSpaceMark);
    } else {
      text.push_back(c);
    }
  }
  if (text.empty()) return;

  // Merge the best-scoring adjacent pair (the score of the piece it makes) until no adjacent
  // pair is a piece.
  std::vector<MergeSymbol> symbols = SplitCharacters(text);
  MergePairs(
      symbols,
      [&](int32_t left, int32_t right, double* priority) {
        const size_t size = symbols[left].n + symbols[right].n;
        const int32_t id = TokenId(std::string_view(text.data() + symbols[left].start, size));
        if (id >= 0) *priority = vocab_.scores[id];
        return id >= 0;
      },
      [](int32_t) {});

  // Every merged symbol is a piece by construction. An unmerged symbol is one character
  // that may be missing from the vocab: it falls back to byte tokens. (llama.cpp also
  // consults a record of merges here, but a single character can never equal the text of
  // a merged pair, so that path never applies to SPM.)
  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const MergeSymbol& sym = symbols[i];
    const std::string_view piece(text.data() + sym.start, sym.n);
    const int32_t id = TokenId(piece);
    if (id >= 0) {
      out->push_back(id);
    } else {
      for (char c : piece) out->push_back(ByteToken(static_cast<uint8_t>(c)));
    }
  }
}

void Tokenizer::EncodeBpe(std::string_view raw, std::vector<int32_t>* out) const {
  const std::string text = PrepareGemma4Text(raw);
  const PieceLookup lookup = [this](std::string_view piece) { return TokenId(piece); };
  std::vector<BpePiece> pieces;
  size_t pos = 0;
  for (std::string_view word = NextGemma4Word(text, &pos); !word.empty();
       word = NextGemma4Word(text, &pos)) {
    // A run of newlines that is itself a token is taken whole (llama.cpp's Gemma 4 rule);
    // other runs merge like any word.
    if (word.front() == '\n') {
      const int32_t id = TokenId(word);
      if (id >= 0) {
        out->push_back(id);
        continue;
      }
    }
    pieces.clear();
    merges_.MergeWord(word, lookup, &pieces);
    for (const BpePiece& p : pieces) {
      if (p.id >= 0) {
        out->push_back(p.id);
        continue;
      }
      for (size_t k = 0; k < p.length; ++k) {
        const int32_t byte = byte_ids_[static_cast<uint8_t>(word[p.offset + k])];
        if (byte >= 0) out->push_back(byte);  // llama.cpp drops a byte it has no token for
      }
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  // Symbols are indexed with int32_t, and escaping (or U+FFFD for a bad byte) can triple the
  // text.
  if (text.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max() / 4)) {
    throw std::length_error("tokenizer: text of " + std::to_string(text.size()) +
                            " bytes is too long to encode");
  }
  std::vector<int32_t> out;
  std::vector<Fragment> fragments;
  if (!text.empty()) Partition(text, parse_special, &fragments);
  out.reserve(text.size() / 3 + fragments.size() + 2);

  if (add_bos && vocab_.add_bos) out.push_back(vocab_.bos_id);
  // llama.cpp's add_space_prefix applies to the first text fragment and to every fragment
  // that directly follows a special token, whether or not a bos was added.
  bool prev_special = true;
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
    } else if (vocab_.kind == VocabKind::kGemma4Bpe) {
      EncodeBpe(text.substr(f.offset, f.length), &out);
    } else {
      EncodeSpm(text.substr(f.offset, f.length), vocab_.add_space_prefix && prev_special, &out);
      prev_special = false;
    }
  }
  if (add_bos && vocab_.add_eos) out.push_back(vocab_.eos_id);
  return out;
}

std::string_view Tokenizer::PieceView(int32_t id, bool special) const {
  if (id < 0 || id >= n_vocab()) {
    throw std::out_of_range("tokenizer: token id " + std::to_string(id) +
                            " is out of range [0, " + std::to_string(n_vocab()) + ")");
  }
  if (!special && (attrs_[id] & kAttrHidden)) return {};
  return std::string_view(piece_pool_).substr(piece_offsets_[id],
                                              piece_offsets_[id + 1] - piece_offsets_[id]);
}

std::string Tokenizer::Piece(int32_t id, bool special) const {
  return std::string(PieceView(id, special));
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool special) const {
  std::string out;
  // Mirrors llama_detokenize: with add_space_prefix the first token (even a hidden one,
  // which then strips nothing) may lose one leading space.
  bool strip_space = vocab_.add_space_prefix;
  for (int32_t id : ids) {
    std::string_view piece = PieceView(id, special);
    if (strip_space && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    strip_space = false;
    out.append(piece);
  }
  if (vocab_.kind == VocabKind::kGemma4Bpe) CleanTokenizationSpaces(&out);
  return out;
}

bool Tokenizer::IsEog(int32_t id) const {
  if (id < 0) return false;
  if (id == vocab_.eos_id) return true;
  return std::find(vocab_.eog_ids.begin(), vocab_.eog_ids.end(), id) != vocab_.eog_ids.end();
}

std::string StreamDecoder::Push(int32_t id) {
  std::string_view piece = tok_.PieceView(id, special_);
  if (first_) {
    first_ = false;
    if (tok_.vocab().add_space_prefix && !piece.empty() && piece.front() == ' ') {
      piece.remove_prefix(1);
    }
  }
  pending_.append(piece);
  std::string out;
  const size_t used = AppendValidUtf8(pending_, /*final=*/false, &out);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  AppendValidUtf8(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace pyengine
