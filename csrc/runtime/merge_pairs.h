// Pairwise merging of a word's characters, best pair first: the loop that both of llama.cpp's
// tokenizers the engine follows run, SentencePiece's (pairs ranked by the score of the piece
// they make) and byte-pair encoding's (pairs ranked by merge rank).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <queue>
#include <string_view>
#include <vector>

namespace pyengine {

// llama.cpp's unicode_len_utf8: the sequence length announced by a lead byte, judged by its
// high nibble only (continuation bytes count as 1, 0xF8..0xFF as 4).
inline size_t LeadByteLength(char c) {
  static constexpr uint8_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[static_cast<uint8_t>(c) >> 4];
}

// One symbol of a word being merged: a byte range linked to its neighbours. A symbol absorbed
// by its left neighbour gets n == 0.
struct MergeSymbol {
  int32_t prev;
  int32_t next;
  size_t start;
  size_t n;
  int32_t id;  // byte-pair merging: the token whose text this range is, or -1
};

// The characters of text (by lead byte; a truncated sequence at the end is cut short), linked.
inline std::vector<MergeSymbol> SplitCharacters(std::string_view text) {
  std::vector<MergeSymbol> symbols;
  symbols.reserve(text.size());
  for (size_t offs = 0; offs < text.size();) {
    const size_t len = std::min(LeadByteLength(text[offs]), text.size() - offs);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(MergeSymbol{index - 1, offs + len == text.size() ? -1 : index + 1, offs, len, -1});
    offs += len;
  }
  return symbols;
}

// Merges adjacent symbols, the queued pair of highest priority first (on equal priorities the
// leftmost: llama.cpp's comparators, kept identical so that the heap pops in the same order
// even for unusual scores), until none is left. rank(left, right, &p)
// says whether two adjacent symbols may merge, and with what priority; grown(left) runs on each
// symbol that absorbed its right neighbour, before its new pairs are ranked. A queued pair one
// of whose sides merged since is stale: sizes only grow, so an unchanged total size means both
// sides are as they were queued.
template <class Rank, class Grown>
void MergePairs(std::vector<MergeSymbol>& symbols, Rank rank, Grown grown) {
  struct Pair {
    int32_t left;
    int32_t right;
    double priority;
    size_t size;  // bytes of left + right when queued
  };
  struct Lower {
    bool operator()(const Pair& l, const Pair& r) const {
      return l.priority < r.priority || (l.priority == r.priority && l.left > r.left);
    }
  };
  std::priority_queue<Pair, std::vector<Pair>, Lower> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    double priority;
    if (rank(left, right, &priority)) {
      queue.push(Pair{left, right, priority, symbols[left].n + symbols[right].n});
    }
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Pair pair = queue.top();
    queue.pop();
    MergeSymbol& left = symbols[pair.left];
    MergeSymbol& right = symbols[pair.right];
    if (left.n == 0 || right.n == 0 || left.n + right.n != pair.size) continue;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pair.left;
    grown(pair.left);
    try_add(left.prev, pair.left);
    try_add(pair.left, left.next);
  }
}

}  // namespace pyengine
