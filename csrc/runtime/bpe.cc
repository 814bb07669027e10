#include "runtime/bpe.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "runtime/merge_pairs.h"

namespace pyengine {
namespace {

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, written for ' '
constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

// Encodes a code point of at most U+10FFFF as UTF-8 by value alone (surrogates included, as
// llama.cpp does).
void AppendCodePoint(uint32_t cpt, std::string* out) {
  if (cpt <= 0x7f) {
    out->push_back(static_cast<char>(cpt));
  } else if (cpt <= 0x7ff) {
    out->push_back(static_cast<char>(0xc0 | (cpt >> 6)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3f)));
  } else if (cpt <= 0xffff) {
    out->push_back(static_cast<char>(0xe0 | (cpt >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cpt >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3f)));
  }
}

}  // namespace

BpeMerges::BpeMerges(const std::vector<std::string>& merges, const PieceLookup& lookup) {
  ranks_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    auto fail = [&](const std::string& why) {
      throw std::invalid_argument("tokenizer: merge " + std::to_string(rank) + " ('" + merge +
                                  "') " + why);
    };
    // llama.cpp looks for the separator from the second byte on, so a leading space belongs
    // to the left piece.
    const size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) fail("is not two pieces separated by a space");
    const std::string_view left = std::string_view(merge).substr(0, space);
    const std::string_view right = std::string_view(merge).substr(space + 1);
    const int32_t l = lookup(left);
    if (l < 0) fail("names '" + std::string(left) + "', which is not a token");
    const int32_t r = lookup(right);
    if (r < 0) fail("names '" + std::string(right) + "', which is not a token");
    if (rank > static_cast<size_t>(INT32_MAX)) fail("is past the largest rank");
    ranks_.emplace(Key(l, r), static_cast<int32_t>(rank));  // a repeat keeps the first rank
  }
}

int32_t BpeMerges::Rank(int32_t left, int32_t right) const {
  const auto it = ranks_.find(Key(left, right));
  return it == ranks_.end() ? -1 : it->second;
}

void BpeMerges::MergeWord(std::string_view word, const PieceLookup& lookup,
                          std::vector<BpePiece>* out) const {
  std::vector<MergeSymbol> symbols = SplitCharacters(word);  // [characters of word]
  for (MergeSymbol& sym : symbols) sym.id = lookup(word.substr(sym.start, sym.n));
  // The lowest merge rank first.
  MergePairs(
      symbols,
      [&](int32_t left, int32_t right, double* priority) {
        // Every merge joins two tokens, so a side that is no token merges with nothing.
        const int32_t l = symbols[left].id, r = symbols[right].id;
        const int32_t rank = l < 0 || r < 0 ? -1 : Rank(l, r);
        *priority = -static_cast<double>(rank);
        return rank >= 0;
      },
      [&](int32_t left) {
        // The joined text need not be a token itself; it then merges no further and falls
        // back to bytes.
        symbols[left].id = lookup(word.substr(symbols[left].start, symbols[left].n));
      });

  for (int32_t i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    out->push_back(BpePiece{symbols[i].start, symbols[i].n, symbols[i].id});
  }
}

std::string PrepareGemma4Text(std::string_view fragment) {
  std::string escaped;
  const size_t n_spaces = static_cast<size_t>(std::count(fragment.begin(), fragment.end(), ' '));
  escaped.reserve(fragment.size() + 2 * n_spaces);
  for (char c : fragment) {
    if (c == ' ') {
      escaped.append(kSpaceMark);
    } else {
      escaped.push_back(c);
    }
  }

  // Decode leniently, as llama.cpp's unicode_cpts_from_utf8: a lead byte with enough
  // continuation bytes after it is one code point, even overlong or a surrogate (encoded again
  // below by value, so an overlong form comes out short); any other byte is U+FFFD on its own.
  std::string out;
  out.reserve(escaped.size());
  const size_t n = escaped.size();
  for (size_t i = 0; i < n;) {
    const uint8_t b = static_cast<uint8_t>(escaped[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cpt = 0;
    if ((b & 0xe0) == 0xc0) {
      len = 2;
      cpt = b & 0x1f;
    } else if ((b & 0xf0) == 0xe0) {
      len = 3;
      cpt = b & 0x0f;
    } else if ((b & 0xf8) == 0xf0) {
      len = 4;
      cpt = b & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const uint8_t c = static_cast<uint8_t>(escaped[i + k]);
      ok = (c & 0xc0) == 0x80;
      cpt = (cpt << 6) | (c & 0x3f);
    }
    if (ok && cpt <= 0x10ffff) {
      AppendCodePoint(cpt, &out);
      i += len;
    } else {
      out.append(kReplacement);
      ++i;
    }
  }
  return out;
}

std::string_view NextGemma4Word(std::string_view text, size_t* pos) {
  const size_t start = *pos;
  if (start >= text.size()) return {};
  const bool newline = text[start] == '\n';
  size_t end = start + 1;
  while (end < text.size() && (text[end] == '\n') == newline) ++end;
  *pos = end;
  return text.substr(start, end - start);
}

void CleanTokenizationSpaces(std::string* text) {
  std::string& t = *text;
  // Each pass compacts the buffer in place, keeping the first byte; pass 2 also blanks the
  // byte after " '" with NUL, which later iterations then see (as in llama.cpp).
  size_t n = t.size();
  size_t total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
    t[total++] = x;
  }

  n = total;
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
      --total;      // the space before
      t[++i] = 0;   // and the one after, skipped
    }
    t[total++] = x;
  }

  n = total;
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
      const char x1 = t[i + 1];
      if (x1 == 's' || x1 == 'm') {
        --total;
      } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
        const char x2 = t[i + 2];
        if ((x1 == 'r' || x1 == 'v') && x2 == 'e') --total;
      }
    }
    t[total++] = x;
  }
  t.resize(total);
}

}  // namespace pyengine
