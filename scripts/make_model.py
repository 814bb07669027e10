#!/usr/bin/env python3
"""Write random-weight Gemma 3 and Gemma 3n GGUF files for tests and benchmarks.

Tests and benchmarks cannot rely on downloaded weights, so they run on synthetic files with the
tensor names, shapes, metadata and tokenizer layout of real Gemma 3 and Gemma 3n GGUFs. Weights are
seeded random numbers scaled so the forward pass stays well conditioned; the vocabulary is a
SentencePiece-style vocabulary learned from an embedded corpus and laid out like Gemma's. The Gemma
3n layout (AltUp, LAuReL, per-layer inputs) is described in gemma3n_tensors.py.

    python scripts/make_model.py --preset tiny --dtype f32 -o tiny.gguf [--seed N] [--set k=v]
    python scripts/make_model.py --preset tiny-3n --dtype q8_0 -o tiny-3n.gguf

From Python: ``from make_model import write_model; write_model("tiny.gguf", "tiny", "q8_0")``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import math
import re
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gemma3n_tensors as g3n  # sibling modules in scripts/, importable wherever make_model is
import gemma4_tensors as g4
import gguf
import numpy as np
from gguf.quants import quantize

from pyengine import _core

T = gguf.TokenType
Q = gguf.GGMLQuantizationType
DTYPES = {  # dtype name -> (tensor type of the matrices, general.file_type)
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    # Written straight from the random values: for shapes whose F16 file would not fit on disk
    # or in memory (the 26B-A4B), where llama.cpp's quantizer needs one as its source.
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
CHUNK_ELEMS = 1 << 22  # values generated and encoded at once: memory stays flat for big presets
ARCHS = ("gemma3", "gemma3n", "gemma4")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a synthetic Gemma 3 or Gemma 3n text model (inert data)."""

    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int  # layer l uses the sliding window unless l % swa_period == swa_period - 1
    n_head: int
    n_head_kv: int
    head_dim: int
    sliding_window: int
    context_length: int
    tied_embeddings: bool = True  # no output.weight: the logits use token_embd
    rms_eps: float = 1e-6
    rope_freq_base: float = 1e6  # global layers
    rope_freq_base_swa: float = 1e4  # sliding-window layers
    rope_scaling_factor: float = 0.0  # linear scaling of the global layers; 0: none
    logit_scale: float = 2.0  # gain of output_norm = std of the logits before the row spread
    embd_row_spread: float = 0.5  # std of log(row norm) of the embedding matrices
    norm_noise: float = 0.1  # norm weights are gain * (1 + noise): the +1 is folded in, as in GGUFs
    name: str = "synthetic-gemma3"
    arch: str = "gemma3"  # general.architecture: "gemma3" or "gemma3n"
    # Sliding-window period: 6 for Gemma 3 (fixed by llama.cpp, not written), 5 for Gemma 3n
    # (written as attention.sliding_window_pattern, one bool per layer, as the converter does).
    swa_period: int = 6
    # Gemma 3n only; llama.cpp fixes these values in code (see gemma3n_tensors).
    n_altup: int = 4  # AltUp residual streams
    n_embd_altup: int = 256  # width of the per-layer inputs
    laurel_rank: int = 64
    n_layer_kv: int = 20  # layers that own a KV cache; later ones reuse an earlier layer's
    n_layer_sparse: int = 10  # leading layers with activation sparsity in the FFN gate
    final_logit_softcap: float = 30.0
    # Gemma 3n: ids from here to n_vocab are multimodal (image/audio) tokens: control tokens in
    # the vocabulary, whose per_layer_token_embd rows are zero as llama.cpp's converter pads
    # them (the real models: 262144 of 262400). 0: every id is a text token.
    n_vocab_per_layer: int = 0
    # Gemma 4 (see gemma4_tensors): head_dim and n_head_kv are the sliding layers', these the
    # full layers'; the last shared_kv_layers layers reuse KV (double-wide when double_wide).
    head_dim_full: int = 0
    n_head_kv_full: int = 0
    shared_kv_layers: int = 0
    double_wide: bool = False
    n_embd_per_layer: int = 0  # per-layer inputs' width; 0: none
    full_k_eq_v: bool = False  # full layers have no V projection (V is K's)
    layer_output_scale: bool = True
    n_expert: int = 0  # routed experts beside every dense FFN; 0: a dense model
    n_expert_used: int = 0
    n_ff_exp: int = 0
    fused_gate_up: bool = True  # experts' gate and up in one tensor (llama.cpp's converter)


TINY = ModelConfig(n_vocab=3072, n_embd=128, n_ff=384, n_layer=8, n_head=4, n_head_kv=2,
                   head_dim=64, sliding_window=32, context_length=1024, tied_embeddings=False,
                   name="synthetic-gemma3-tiny")
PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,
    "tiny-tied": dataclasses.replace(TINY, tied_embeddings=True, name="synthetic-gemma3-tiny-tied"),
    # The real text shapes of gemma3:1b and gemma3:4b (both tie the output to token_embd).
    "1b": ModelConfig(n_vocab=262144, n_embd=1152, n_ff=6912, n_layer=26, n_head=4, n_head_kv=1,
                      head_dim=256, sliding_window=512, context_length=32768,
                      name="synthetic-gemma3-1b"),
    "4b": ModelConfig(n_vocab=262208, n_embd=2560, n_ff=10240, n_layer=34, n_head=8, n_head_kv=4,
                      head_dim=256, sliding_window=1024, context_length=131072,
                      rope_scaling_factor=8.0, name="synthetic-gemma3-4b"),
    # Gemma 3n. The tiny model has layers past 20 so that KV sharing runs: layers 20-23 (sliding)
    # read layer 18's KV and layer 24 (global) reads layer 19's. Its window (32) is shorter than
    # test prompts.
    "tiny-3n": ModelConfig(n_vocab=3072, n_embd=128, n_ff=256, n_layer=25, n_head=4, n_head_kv=2,
                           head_dim=64, sliding_window=32, context_length=1024, arch="gemma3n",
                           swa_period=5, name="synthetic-gemma3n-tiny"),
    # The real text shapes of gemma3n:e2b and gemma3n:e4b (benchmarks only: per_layer_token_embd
    # alone holds 262400 x 256 * n_layer values).
    "e2b": ModelConfig(n_vocab=262400, n_embd=2048, n_ff=8192, n_layer=30, n_head=8, n_head_kv=2,
                       head_dim=256, sliding_window=512, context_length=32768, arch="gemma3n",
                       swa_period=5, name="synthetic-gemma3n-e2b"),
    "e4b": ModelConfig(n_vocab=262400, n_embd=2048, n_ff=16384, n_layer=35, n_head=8,
                       n_head_kv=2, head_dim=256, sliding_window=512, context_length=32768,
                       arch="gemma3n", swa_period=5, name="synthetic-gemma3n-e4b"),
}
# Gemma 4. The tiny dense model has 10 layers of which the last 5 reuse KV (sliding ones layer
# 3's, the global one layer 4's) and are double-wide; its full layers have bigger heads, one KV
# head and no V projection; it has per-layer inputs. The tiny MoE model routes 2 of 8 experts.
_G4 = dict(arch="gemma4", swa_period=5, final_logit_softcap=30.0)
PRESETS["tiny-4"] = ModelConfig(
    n_vocab=3072, n_embd=128, n_ff=256, n_layer=10, n_head=4, n_head_kv=2, head_dim=32,
    head_dim_full=64, n_head_kv_full=1, sliding_window=32, context_length=1024,
    shared_kv_layers=5, double_wide=True, n_embd_per_layer=64, full_k_eq_v=True,
    name="synthetic-gemma4-tiny", **_G4)
PRESETS["tiny-4-moe"] = ModelConfig(
    n_vocab=3072, n_embd=128, n_ff=128, n_layer=6, n_head=4, n_head_kv=2, head_dim=32,
    head_dim_full=64, n_head_kv_full=1, sliding_window=32, context_length=1024,
    full_k_eq_v=True, n_expert=8, n_expert_used=2, n_ff_exp=64, tied_embeddings=True,
    name="synthetic-gemma4-tiny-moe", **dict(_G4, swa_period=6))
# The real text shapes of Gemma 4 E2B, E4B and 26B-A4B (benchmarks only).
PRESETS["gemma4-e2b"] = ModelConfig(
    n_vocab=262144, n_embd=1536, n_ff=6144, n_layer=35, n_head=8, n_head_kv=1, head_dim=256,
    head_dim_full=512, n_head_kv_full=1, sliding_window=512, context_length=131072,
    shared_kv_layers=20, double_wide=True, n_embd_per_layer=256, name="synthetic-gemma4-e2b",
    **_G4)
PRESETS["gemma4-e4b"] = ModelConfig(
    n_vocab=262144, n_embd=2560, n_ff=10240, n_layer=42, n_head=8, n_head_kv=2, head_dim=256,
    head_dim_full=512, n_head_kv_full=2, sliding_window=512, context_length=131072,
    shared_kv_layers=18, n_embd_per_layer=256, name="synthetic-gemma4-e4b", **_G4)
PRESETS["gemma4-26b"] = ModelConfig(
    n_vocab=262144, n_embd=2816, n_ff=2112, n_layer=30, n_head=16, n_head_kv=8, head_dim=256,
    head_dim_full=512, n_head_kv_full=2, sliding_window=1024, context_length=262144,
    full_k_eq_v=True, n_expert=128, n_expert_used=8, n_ff_exp=704,
    name="synthetic-gemma4-26b-a4b", **dict(_G4, swa_period=6))

# Models for K-quant tests: every matrix row (GGUF ne0) is a multiple of 256, the K-quants' block,
# so llama.cpp's quantizer really writes Q2_K..Q6_K and IQ4_XS; on tiny's rows of 128 it falls back
# to Q5_0 / Q8_0 / IQ4_NL. (In Gemma 3n the small AltUp, LAuReL and per_layer_model_proj matrices
# are never quantized.)
PRESETS["tiny-k"] = dataclasses.replace(TINY, n_embd=256, n_ff=512,
                                        name="synthetic-gemma3-tiny-k")
PRESETS["tiny-3n-k"] = dataclasses.replace(PRESETS["tiny-3n"], n_embd=256, n_ff=512,
                                           name="synthetic-gemma3n-tiny-k")
PRESETS["tiny-4-k"] = dataclasses.replace(PRESETS["tiny-4"], n_embd=256, n_ff=512,
                                          name="synthetic-gemma4-tiny-k")
PRESETS["tiny-4-moe-k"] = dataclasses.replace(PRESETS["tiny-4-moe"], n_embd=256, n_ff=256,
                                              n_ff_exp=256, name="synthetic-gemma4-tiny-moe-k")

# ------------------------------------------------------------------------------------------ vocab

# Training text for the merges: English, French and code, so that word pieces, accented pieces and
# punctuation pieces exist, each with its chain of intermediate merges.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can be tested with random weights.
Language models read text as tokens: a piece of a word, a whole word or a single byte.
When the prompt is longer than the sliding window, local layers only see recent positions.
The engine schedules many requests at once; each one keeps its keys and values in a shared cache.
Please write a short story about a robot who learns to paint, then explain what the story means.
What is the capital of France? The capital of France is Paris, and the river is the Seine.
Hello world! How are you today? I am fine, thank you. Let us test the tokenizer with sentences.
Users expect fast answers; benchmarks measure the speed of prompt processing and generation.
Scientists observed that water boils at a lower temperature on high mountains.
My grandmother grows tomatoes, beans and carrots in her garden, and cooks for the whole family.
Remember to check the results carefully; errors in the data often hide in the details.
The train arrives at seven o'clock tomorrow morning, so we should leave the house early.
Le renard brun saute par-dessus le chien paresseux. Où est la bibliothèque? Près de la gare.
Les modèles de langue découpent le texte en morceaux; chaque morceau devient un élément.
Il était une fois un garçon très curieux qui voulait comprendre comment fonctionnent les machines.
Nous préférons les réponses précises, même quand la question est difficile ou légèrement ambiguë.
L'été dernier, à Montréal, j'ai mangé une crème brûlée délicieuse au café de la rue Saint-Denis.
Pourquoi le ciel est-il bleu? Parce que la lumière du soleil est diffusée par l'atmosphère.
Mon frère travaille dans une entreprise qui fabrique des vélos électriques; il aime son métier.
def forward(self, tokens: list[int], positions: list[int]) -> np.ndarray:
    hidden = self.embed(tokens) * math.sqrt(self.n_embd)
    for layer in self.layers:
        hidden = layer(hidden, positions)
    return self.output(self.norm(hidden))
class Tokenizer:
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return [self.bos_id] + self.pieces(text) if add_bos else self.pieces(text)
for (int i = 0; i < n_tokens; ++i) { sum += x[i] * w[i]; if (sum > max) max = sum; }
while (queue.size() > 0) { auto request = queue.pop(); scheduler.admit(request, budget); }
static const char *name = "model"; return std::make_unique<Engine>(config, std::move(weights));
import numpy as np; from pathlib import Path; print(f"loaded {len(weights)} tensors from {path}")
SELECT name, count(*) FROM requests WHERE status = 'done' GROUP BY name ORDER BY count DESC;
{"model": "gemma3:1b", "prompt": "Why is the sky blue?", "options": {"temperature": 0.8}}
user model system assistant content message response request stream options format template
"""
CHARS = ("".join(chr(c) for c in range(0x21, 0x7F)) + "\u2581"
         + "àâäáãåçéèêëíìîïñóòôöõúùûüýÿœæßÀÂÄÁÇÉÈÊËÍÎÏÑÓÔÖÚÙÛÜŒÆ"
         + "«»“”‘’–—…€£¥°©®™•·¿¡×÷±αβγδλμπσΩабвгдежзиклмнопрст"
         + "的一是不了人我在有他这中大来上个们"  # a few CJK; the rest falls back to byte tokens
         + "😀😂❤👍🙂🎉")  # a few emoji; the others fall back to byte tokens
# User-defined pieces are matched in raw text before anything else, even with special parsing off.
USER_DEFINED = (["\n" * k for k in range(1, 9)] + [" " * k for k in range(2, 9)]
                + ["\t" * k for k in range(1, 5)]
                + ["<code>", "</code>", "<table>", "</table>", "<tr>", "<td>", "<b>", "</b>",
                   "<h1>", "</h1>"])
# Corpus pre-tokenizer: letters with an optional leading U+2581, punctuation runs, single digits
# (Gemma has no multi-digit pieces), a lone U+2581.
WORD_RE = re.compile(r"\u2581?[^\W\d_]+|\u2581?(?:[^\w\s\u2581]|_)+|\d|\u2581")
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
CHAT_TEMPLATE = (  # Gemma's turn format; a system message is folded into the first user turn
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _corpus_words() -> Counter[str]:
    """Word counts of the corpus, pre-tokenized as llama.cpp sees text: runs of 2+ spaces, tabs and
    newlines are user-defined tokens that split words; single spaces become U+2581."""
    words: Counter[str] = Counter()
    for part in re.split(r" {2,}|\t+|\n", CORPUS):
        words.update(WORD_RE.findall(part.replace(" ", "\u2581")))
    # Rare variants (with and without the leading U+2581, capitalized) give the vocabulary the
    # spread of word forms a real one has; each counts once, so it merges after the real words.
    for word in list(words):
        core = word.lstrip("\u2581")
        if core.isalpha():
            for form in (core, core.lower(), core.capitalize()):
                for variant in (form, "\u2581" + form):
                    words[variant] = words[variant] or 1
    return words


def _train_merges(words: Counter[str], max_merges: int) -> list[tuple[str, str]]:
    """Byte-pair-style merges, most frequent pair first (ties: smallest pair), as (left, right).

    Pair counts are updated incrementally and a lazy max-heap finds the next pair, so the tiny vocab
    builds in well under a second.
    """
    seqs = [list(w) for w in words]
    freqs = list(words.values())
    counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < max_merges:
        neg, a, b = heapq.heappop(heap)
        if -neg != counts.get((a, b), 0) or neg == 0:
            continue  # stale heap entry
        merges.append((a, b))
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop((a, b), ())):
            seq, f = seqs[i], freqs[i]
            for pair in zip(seq, seq[1:]):
                counts[pair] -= f
                touched.add(pair)
            j, out = 0, []
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for pair in zip(out, out[1:]):
                counts[pair] += f
                where[pair].add(i)
                touched.add(pair)
        for pair in touched:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], *pair))
    return merges


def _fill(pieces: list[str], seen: set[str], n_pieces: int, n_vocab: int) -> None:
    """Appends unique pseudo-words ("\u2581" and three syllables) not in ``seen`` to ``pieces``
    until it holds ``n_pieces``."""
    for syllables in itertools.product(SYLLABLES, repeat=3):
        if len(pieces) >= n_pieces:
            break
        piece = "\u2581" + "".join(syllables)
        if piece not in seen:
            pieces.append(piece)
    if len(pieces) < n_pieces:
        raise ValueError(f"n_vocab {n_vocab} is larger than the filler allows")


def build_vocab(n_vocab: int, n_text: int = 0) -> tuple[list[str], list[float], list[int]]:
    """Gemma-like SentencePiece vocabulary of exactly n_vocab pieces: (tokens, scores, types).

    Layout: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>, 5..104 <unused0..99>, 105
    <start_of_turn>, 106 <end_of_turn>, then user-defined whitespace runs and tags, the 256 byte
    tokens, merged pieces (score -rank), filler pieces once the corpus runs out of merges, and the
    single characters last. With 0 < n_text < n_vocab, those are the first n_text pieces and the
    rest are Gemma 3n's multimodal control tokens (<image_soft_token>, <audio_soft_token>,
    <mm_unused{i}>), which plain text never produces.
    """
    if 0 < n_text < n_vocab:
        tokens, scores, types = build_vocab(n_text)
        extra = ["<image_soft_token>", "<audio_soft_token>"]
        extra += [f"<mm_unused{i}>" for i in range(n_vocab - n_text - len(extra))]
        extra = extra[: n_vocab - n_text]
        return tokens + extra, scores + [0.0] * len(extra), types + [int(T.CONTROL)] * len(extra)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [T.CONTROL, T.CONTROL, T.CONTROL, T.UNKNOWN, T.CONTROL]
    tokens += [f"<unused{i}>" for i in range(100)] + ["<start_of_turn>", "<end_of_turn>"]
    types += [T.UNUSED] * 100 + [T.CONTROL] * 2
    scores = [0.0] * len(tokens)
    # llama.cpp's converter writes user-defined pieces with raw spaces (not U+2581), score -1000.
    tokens += USER_DEFINED
    types += [T.USER_DEFINED] * len(USER_DEFINED)
    scores += [-1000.0] * len(USER_DEFINED)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    scores += [0.0] * 256

    words = _corpus_words()
    chars = list(dict.fromkeys(CHARS + "".join(sorted(set("".join(words)) - set(CHARS)))))
    n_pieces = n_vocab - len(tokens) - len(chars)
    if n_pieces < 0:
        raise ValueError(f"n_vocab must be at least {len(tokens) + len(chars)}")
    seen = set(tokens) | set(chars)
    pieces = [a + b for a, b in _train_merges(words, n_pieces) if a + b not in seen]
    seen.update(pieces)
    # Filler up to the real vocab sizes: rare, long, unique pseudo-words. They merge only after
    # every corpus piece (lowest scores), so the corpus tokenizes as it would without them.
    _fill(pieces, seen, n_pieces, n_vocab)
    tokens += pieces + chars
    types += [T.NORMAL] * (n_pieces + len(chars))
    scores += [float(-rank) for rank in range(n_pieces + len(chars))]
    return tokens, scores, [int(t) for t in types]


# Gemma 4's control tokens where its vocabulary has them (105, 106 as Gemma 3's turn markers),
# then the ones its converter types user-defined, so that they are always rendered.
GEMMA4_CONTROL = ["<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|think|>"]
GEMMA4_VISIBLE = ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                  "<tool_response|>", '<|"|>']
GEMMA4_CHAT_TEMPLATE = (  # Gemma 4's turn format, roles as they are (system included)
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<|turn>' + role + '\\n' + message['content'] | trim + '<turn|>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|turn>model\\n' }}{%- endif -%}"
)


def build_gemma4_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Gemma 4-like byte-pair vocabulary of exactly n_vocab pieces: (tokens, types, merges).

    Layout: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>, 5..104 <unused0..99>, 105 <|turn>,
    106 <turn|>, the other control and visible tokens, newline runs, the 256 byte tokens, the
    single characters, then the corpus merges' pieces in rank order and filler pieces that no
    merge produces. Merges are "left right" strings; every piece a merge makes is a token.
    """
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<unused{i}>" for i in range(100)]
    types = [T.CONTROL, T.CONTROL, T.CONTROL, T.UNKNOWN, T.CONTROL] + [T.UNUSED] * 100
    tokens += GEMMA4_CONTROL + GEMMA4_VISIBLE
    types += [T.CONTROL] * len(GEMMA4_CONTROL) + [T.USER_DEFINED] * len(GEMMA4_VISIBLE)
    tokens += ["\n" * k for k in range(1, 9)]
    types += [T.NORMAL] * 8
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    words = _corpus_words()
    chars = list(dict.fromkeys(CHARS + "".join(sorted(set("".join(words)) - set(CHARS)))))
    seen = set(tokens)
    chars = [c for c in chars if c not in seen]
    tokens += chars
    types += [T.NORMAL] * len(chars)
    seen.update(chars)
    n_pieces = n_vocab - len(tokens)
    if n_pieces < 0:
        raise ValueError(f"n_vocab must be at least {len(tokens)}")
    merges, pieces = [], []
    for a, b in _train_merges(words, n_pieces):
        merges.append(f"{a} {b}")
        if a + b not in seen:
            pieces.append(a + b)
            seen.add(a + b)
    _fill(pieces, seen, n_pieces, n_vocab)  # pieces no merge makes
    tokens += pieces[:n_pieces]
    types += [T.NORMAL] * n_pieces
    return tokens, [int(t) for t in types], merges


# ---------------------------------------------------------------------------------------- weights

def make_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """The config of a preset with some fields replaced, e.g. make_config("tiny", n_layer=12)."""
    cfg = dataclasses.replace(PRESETS[preset], **overrides)
    if cfg.arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg.arch!r}")
    if cfg.n_vocab_per_layer and (cfg.arch != "gemma3n" or
                                  not 0 < cfg.n_vocab_per_layer <= cfg.n_vocab):
        raise ValueError("n_vocab_per_layer is a gemma3n setting, at most n_vocab")
    return cfg


def _dims(cfg: ModelConfig) -> dict[str, int]:
    """The sizes of the dimension names the architecture tables use
    (``_core.architecture_tensors``).
    The per-layer table is written at n_vocab rows, as llama.cpp's converter pads it."""
    return {"n_embd": cfg.n_embd, "n_vocab": cfg.n_vocab, "n_vocab_per_layer": cfg.n_vocab,
            "q_dim": cfg.n_head * cfg.head_dim, "kv_dim": cfg.n_head_kv * cfg.head_dim,
            "head_dim": cfg.head_dim, "n_ff": cfg.n_ff, "per_layer_width": cfg.n_embd_altup,
            "per_layer_all": cfg.n_embd_altup * cfg.n_layer, "laurel_rank": cfg.laurel_rank,
            "altup_streams": cfg.n_altup, "altup_streams_less_1": cfg.n_altup - 1,
            "altup_streams_squared": cfg.n_altup * cfg.n_altup}


def tensor_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """Name, numpy shape ((out, in) for matrices; the AltUp projections are (n_altup - 1, out,
    in)) and kind of every tensor in file order, from the architecture's table in the native
    core. Gemma 3n's layers that reuse an earlier layer's KV still carry attn_k / attn_v
    (llama.cpp needs them); Gemma 4's do not (see gemma4_tensors.has_tensor)."""
    if cfg.arch == "gemma4":
        return _gemma4_specs(cfg)
    dims = _dims(cfg)
    globals_, block = [], []
    for spec in _core.architecture_tensors(cfg.arch):
        if spec["optional"] and cfg.tied_embeddings:
            continue  # the output projection: the logits use token_embd
        shape = tuple(dims[d] for d in reversed(spec["ne"]))
        (block if spec["per_layer"] else globals_).append((spec["name"], shape, spec["kind"]))
    specs = list(globals_)
    for i in range(cfg.n_layer):
        specs += [(f"blk.{i}.{name}", shape, kind) for name, shape, kind in block]
    return specs


def _gemma4_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """tensor_specs for Gemma 4, whose layers differ in which tensors they have and their shapes."""
    table = _core.architecture_tensors(cfg.arch)
    specs = []
    for layer in [-1] + list(range(cfg.n_layer)):
        dims = g4.dims(cfg, layer)
        for spec in table:
            if spec["per_layer"] != (layer >= 0) or not g4.has_tensor(cfg, spec, layer):
                continue
            shape = tuple(dims[d] for d in reversed(spec["ne"]))
            name = f"blk.{layer}.{spec['name']}" if layer >= 0 else spec["name"]
            specs.append((name, shape, spec["kind"]))
    return specs


def _scale(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Std of a matrix's values, or gain of a 1-D weight (stored as gain * (1 + noise)).

    Matrices default to std 1/sqrt(fan_in): each projection keeps its input's RMS, and an
    embedded token (scaled by sqrt(n_embd)) starts the residual stream at RMS ~1; output_norm
    carries the logit scale. Gemma 3n uses its norm weights as stored (no +1), so a gain is the
    scale the norm leaves, and a few of its tensors get their input with a fixed, non-unit
    scale in the graph (see gemma3n_tensors for why each constant is what it is).
    """
    base = name.removesuffix(".weight").rsplit(".", 1)[-1]
    if base == "output_norm":
        return cfg.logit_scale  # the logits' std before the embedding's row spread
    if cfg.arch == "gemma3":
        return 1.0 if len(shape) == 1 else 1.0 / math.sqrt(shape[-1])
    if len(shape) == 1:
        if base in ("attn_q_norm", "attn_k_norm"):
            # Gemma 3n and 4 do not scale q.k by 1/sqrt(head_dim); small q/k norm gains do it, so
            # the attention scores have std ~1 as in Gemma 3 instead of sqrt(head_dim).
            return max(cfg.head_dim, cfg.head_dim_full) ** -0.25
        if cfg.arch == "gemma4":
            return 1.0
        return g3n.FFN_POST_GAIN if base == "post_ffw_norm" else 1.0
    if base == "per_layer_token_embd":
        # Looked up rows are scaled by sqrt(width): RMS ~1, like the projected half they are
        # averaged with.
        return 1.0 / math.sqrt(cfg.n_embd_per_layer if cfg.arch == "gemma4" else cfg.n_embd_altup)
    if cfg.arch == "gemma4":
        return g4.matrix_scale(base, shape)
    if base == "altup_router":
        # Its input is RMS-normed, then divided by n_embd; this std undoes that so the router's
        # tanh sees values of std ROUTER_PRE_TANH_STD (modalities neither ~0 nor saturated).
        return g3n.ROUTER_PRE_TANH_STD * math.sqrt(cfg.n_embd)
    if base == "altup_predict_coef":
        return g3n.PREDICT_COEF_STD
    if base == "altup_correct_coef":
        return g3n.CORRECT_COEF_STD
    return 1.0 / math.sqrt(shape[-1])


def _tensor_chunks(name: str, shape: tuple[int, ...], cfg: ModelConfig,
                   seed: int) -> Iterator[np.ndarray]:
    """Float32 values of one tensor, in chunks of rows (a 3-D tensor is a stack of row blocks).

    Every tensor has its own generator seeded by (seed, name), so its values do not depend on the
    other tensors; ``_scale`` gives their spread.
    """
    key = zlib.crc32(name.encode())
    rng = np.random.default_rng([seed, key])
    fixed = g4.fixed_values(cfg, name) if cfg.arch == "gemma4" else None
    if fixed is not None:
        yield np.array(fixed, dtype=np.float32)
        return
    if len(shape) == 1:
        gain = _scale(name, shape, cfg)
        yield gain * (1.0 + cfg.norm_noise * rng.standard_normal(shape, dtype=np.float32))
        return
    rows, cols = math.prod(shape[:-1]), shape[-1]
    row_scale = np.full((rows, 1), _scale(name, shape, cfg), dtype=np.float32)
    if name in ("token_embd.weight", "output.weight") and cfg.embd_row_spread > 0:
        # Log-normal row norms (trained embeddings have them too) give the logits a heavy upper
        # tail: the top-1 token then usually stands clear of the runner-up, which keeps top-1
        # comparisons between two implementations meaningful.
        spread = np.random.default_rng([seed, key, 1]).standard_normal((rows, 1))
        row_scale *= np.exp(cfg.embd_row_spread * spread).astype(np.float32)
    if name == "per_layer_token_embd.weight" and 0 < cfg.n_vocab_per_layer < rows:
        row_scale[cfg.n_vocab_per_layer:] = 0.0  # the multimodal ids: zero rows, as llama.cpp
    step = max(1, CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        x = rng.standard_normal((min(step, rows - r0), cols), dtype=np.float32)
        x *= row_scale[r0:r0 + len(x)]
        yield x


def _add_metadata(w: gguf.GGUFWriter, cfg: ModelConfig, dtype: str) -> None:
    """Model and tokenizer keys, as llama.cpp's converter writes them for Gemma 3 and 3n."""
    qtype, file_type = DTYPES[dtype]
    w.add_name(cfg.name)
    w.add_file_type(file_type)
    if qtype not in (Q.F32, Q.F16):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    # Gemma 3n's config lists one FFN width per layer, and the converter writes that list;
    # Gemma 4's differ per layer (double-wide), as its KV-head counts do.
    if cfg.arch == "gemma4":
        w.add_feed_forward_length([g4.n_ff(cfg, i) for i in range(cfg.n_layer)])
    else:
        w.add_feed_forward_length([cfg.n_ff] * cfg.n_layer if cfg.arch == "gemma3n" else cfg.n_ff)
    w.add_head_count(cfg.n_head)
    if cfg.arch == "gemma4":
        w.add_head_count_kv([g4.n_head_kv(cfg, i) for i in range(cfg.n_layer)])
    else:
        w.add_head_count_kv(cfg.n_head_kv)
    head_dim = cfg.head_dim_full if cfg.arch == "gemma4" else cfg.head_dim
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_sliding_window(cfg.sliding_window)
    w.add_rope_freq_base(cfg.rope_freq_base)
    w.add_rope_freq_base_swa(cfg.rope_freq_base_swa)
    if cfg.rope_scaling_factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
    if cfg.arch == "gemma3n":
        g3n.add_metadata(w, cfg)
    if cfg.arch == "gemma4":
        g4.add_metadata(w, cfg)

    if cfg.arch == "gemma4":  # byte pairs, as llama.cpp's converter writes Gemma 4's
        tokens, types, merges = build_gemma4_vocab(cfg.n_vocab)
        w.add_tokenizer_model("gemma4")
        w.add_tokenizer_pre("gemma4")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
        w.add_chat_template(GEMMA4_CHAT_TEMPLATE)
        return
    tokens, scores, types = build_vocab(cfg.n_vocab, cfg.n_vocab_per_layer)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)


def write_model(path: str | Path, preset: str = "tiny", dtype: str = "f32", seed: int = 0,
                **overrides: Any) -> Path:
    """Write a random-weight Gemma 3 or Gemma 3n GGUF file and return its path.

    preset: a key of PRESETS. dtype: "f32", "f16", "bf16" or "q8_0" for the matrices; the 1-D
    weights (and Gemma 3n's small AltUp coefficient matrices) stay F32, as in real files.
    overrides: ModelConfig fields to replace, e.g. n_layer=12. The same (preset, overrides, seed)
    always gives the same weights, whatever dtype. Tensors are generated and written in chunks,
    so memory stays small even for the 4b and e4b presets.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = make_config(preset, **overrides)
    # Norms, scales and the small AltUp matrices stay F32 for every file type, as the converter
    # keeps them (rows of 4 values could not be Q8_0 anyway).
    qtype = DTYPES[dtype][0]
    # So does the MoE router (llama.cpp's converter and quantizer keep ffn_gate_inp F32).
    specs = [(name, shape, Q.F32 if kind in ("norm", "scale", "small") or g4.keeps_f32(name)
              else qtype)
             for name, shape, kind in tensor_specs(cfg)]
    path = Path(path)
    w = gguf.GGUFWriter(path, cfg.arch)
    _add_metadata(w, cfg, dtype)
    for name, shape, qtype in specs:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise ValueError(f"{name}: rows of {shape[-1]} values do not fit {dtype} blocks")
        nbytes = math.prod(shape) // block * type_size
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    # GGUFWriter.write_tensor_data wants whole tensors; write the data section chunk by chunk.
    assert w.fout is not None
    fout = w.fout[0]
    for name, shape, qtype in specs:
        w.write_padding(fout, fout.tell())  # each tensor starts at a multiple of the alignment
        for chunk in _tensor_chunks(name, shape, cfg, seed):
            quantize(chunk, qtype).tofile(fout)
    w.write_padding(fout, fout.tell())
    w.close()
    return path


def _parse_override(text: str) -> tuple[str, Any]:
    """'n_layer=12' -> ('n_layer', 12), typed after the ModelConfig field."""
    key, _, value = text.partition("=")
    kinds = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    if key not in kinds:
        raise argparse.ArgumentTypeError(f"unknown config field {key!r}")
    if kinds[key] == "bool":
        return key, value.lower() in ("1", "true", "yes")
    return key, {"int": int, "float": float}.get(str(kinds[key]), str)(value)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                    metavar="FIELD=VALUE", help="replace a ModelConfig field (repeatable)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    path = write_model(args.output, args.preset, args.dtype, args.seed, **dict(args.overrides))
    size_mib = path.stat().st_size / 2**20
    print(f"wrote {path} ({size_mib:.1f} MiB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
