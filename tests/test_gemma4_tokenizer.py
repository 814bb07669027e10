"""Gemma 4's byte-pair tokenizer agrees with llama.cpp's, id for id and byte for byte.

The vocabulary is trained here with the `tokenizers` package, laid out like Gemma 4's (control
and user-defined tokens first, then <0x00>..<0xFF>, then the learned pieces and a few runs of
newlines) and written as a gemma4 GGUF that llama.cpp loads with vocab_only.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import pytest

from test_tokenizer import llama_detokenize

from pyengine import GGUFError, _core

tokenizers = pytest.importorskip("tokenizers")

DATA = Path(__file__).parent / "data"
CORPUS = json.loads((DATA / "tokenizer_corpus.json").read_text("utf-8"))

SPACE = "\u2581"
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]  # ids 0..5
USER_DEFINED = ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                "<tool_response|>", '<|"|>']
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# Runs of newlines that are tokens: taken whole. Other runs merge ("\n \n", "\n\n \n\n").
NEWLINE_RUNS = ["\n\n", "\n\n\n", "\n\n\n\n", "\n" * 8]
BOS, EOS = 2, 1

# Besides the English of perplexity_en.txt: code, other scripts and Gemma 4 chat turns.
TRAINING_EXTRA = """\
def tokenize(text: str, add_bos: bool = True) -> list[int]:
    if not text:
        return [BOS] if add_bos else []
    for i, piece in enumerate(text.split(" ")):
\t\tyield i, piece  # tabs and spaces both indent

class Vocab:
    def __init__(self, tokens):
        self.tokens = list(tokens)

for (int i = 0; i < n; ++i) {
    sum += a[i] * b[i];
}
Les enfants jouent dans le jardin près de la rivière. Où est la gare ?
Die Straße führt über die Brücke zum Bahnhof. Schöne Grüße aus München.
El niño comió una manzana y después durmió la siesta en el jardín.
今日は天気がいいので、公園を散歩しました。日本語の文章です。
我们今天学习自然语言处理。你好，世界。
Привет, как дела? Сегодня хорошая погода.
<|turn>user
What is the weather in Paris?<turn|>
<|turn>model
<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_response>
"""

GEMMA4_TEXTS = [
    "<|turn>system\nYou are a helpful assistant.<turn|>\n<|turn>user\nHi!<turn|>\n<|turn>model\n",
    "<|turn>model\n<|channel>thought\nThe user greets me.<channel|>Hello! How can I help?<turn|>",
    '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,unit:<|"|>celsius<|"|>}<tool_call|>',
    '<|tool_response>response:get_weather{temperature:15}<tool_response|>',
    "<bos><|turn>user\nhello<turn|><eos>",
    "text <|turn> text <turn|> text",
    "<|turn><|turn><turn|><turn|>",
    "<|turn", "turn|>", "<|channel|>", "<|tool_response",
    "<pad><unk><bos>",
    '<|"|>quoted<|"|>',
    "x<|channel>y<channel|>z",
    "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\n\n\n\n\n", "\n" * 6, "\n" * 7, "\n" * 8, "\n" * 9,
    "\n" * 17, "a\n\n\nb\n\n\n\n\nc", "\r\n\r\n\r\n", "\n \n \n", " \n\n ", "\t\n\t\n\n\t",
    "def f(x):\n    if x:\n        return 1\n\n\n    return 0\n",
    "\tindented\n\t\tmore\n\t\t\tdeeper\n",
    "    four spaces\n        eight spaces",
    "    ", " ", "  leading", "trailing  ", " both ", "\u2581", f"{SPACE}{SPACE}x", f"a{SPACE}b c",
    "a , b . c ! d ? e", "it 's we 're they 've I 'm you 'll he 'd don 't",
    "a ' b", "x ' ' y", " ' ", "' '", "'s", " 's", "a 'bc", "end .", " .", ".",
    "xq", "xqxq xxqq", "a xq b", "éééé", "e\u0301 e\u0301\u0301 a\u0308o\u0308",
    "Zalgo: Z\u0351\u0352a\u0353l\u0354g\u0355o\u0356", "ﬁ ligature", "Ω ≈ ç √ ∫",
    "日本語のテキストと English mixed", "한국어 텍스트", "emoji 😀 family 👨‍👩‍👧 flag 🇫🇷",
    "🙂" * 10, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u0000nul", "tab\there", "a\u00a0b", "\u3000full width space",
    "The quick brown fox jumps over the lazy dog. " * 5,
]
TEXTS = CORPUS + GEMMA4_TEXTS

# Byte strings llama.cpp reads leniently: each bad byte becomes U+FFFD, and overlong forms
# are decoded by value. (Overlong spaces and code points past U+10FFFF are left out: llama.cpp
# aborts on those.)
BAD_UTF8 = [b"\xff", b"a\xffb", b"\xc3", b"\xc3(", b"\xe2\x96", b"\xe2\x96 x", b"\x80\x80\x80",
            b"\xc0\x80", b"\xc0\x8a\xc0\x8a", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80",
            b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\xf0", b"caf\xe9 cr\xe8me", b"<|turn>\xff<turn|>"]


def train_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-pair vocabulary laid out like Gemma 4's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    # A small alphabet leaves rarer characters (most emoji, some CJK) to the byte fallback.
    trainer = trainers.BpeTrainer(vocab_size=3000, limit_alphabet=180, show_progress=False,
                                  special_tokens=CONTROL + USER_DEFINED + BYTES)
    text = (DATA / "perplexity_en.txt").read_text("utf-8") + TRAINING_EXTRA
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    assert [model["vocab"][t] for t in tokens] == list(range(len(tokens)))
    assert tokens[: len(CONTROL)] == CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    assert not any(" " in t for t in tokens)  # a space would make "left right" ambiguous
    assert "\n" in tokens
    tokens += [run for run in NEWLINE_RUNS if run not in tokens]
    merges += ["\n \n", "\n\n \n\n"]
    # Two characters whose join is no token: the merged symbol falls back to bytes.
    assert "xq" not in tokens and "x" in tokens and "q" in tokens
    merges += ["x q"]
    merges += [merges[0]]  # listed twice: the first rank counts
    types = []
    for t in tokens:
        if t in BYTES:
            types.append(gguf.TokenType.BYTE)
        elif t == "<unk>":
            types.append(gguf.TokenType.UNKNOWN)
        elif t in CONTROL:
            types.append(gguf.TokenType.CONTROL)
        elif t in USER_DEFINED:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types], merges


def write_vocab(path: Path, tokens: list[str], types: list[int], merges: list[str] | None,
                model: str | None = "gemma4", arch: str = "gemma4") -> Path:
    """A GGUF holding only a vocabulary (what llama.cpp's vocab_only load reads)."""
    w = gguf.GGUFWriter(str(path), arch)
    if model is not None:
        w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)  # llama.cpp overrides this for Gemma 4; so must we
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def vocab():
    return train_vocab()


@pytest.fixture(scope="session")
def gemma4_gguf(vocab, tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("gemma4") / "vocab.gguf", *vocab)


@pytest.fixture(scope="module")
def pair(gemma4_gguf):
    import llama_cpp  # the oracle: a hard requirement of the test suite

    llm = llama_cpp.Llama(model_path=str(gemma4_gguf), vocab_only=True, verbose=False)
    return _core.Tokenizer(str(gemma4_gguf)), llm


def llama_piece(llm, token: int, special: bool) -> bytes:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, len(buf), 0, special)
    assert n >= 0
    return buf.raw[:n]


def test_texts_are_varied():
    assert len(TEXTS) >= 300 and "" in TEXTS
    text = "".join(TEXTS)
    for needle in ("日", "😀", "\u0301", "\t", "\n" * 5, "  ", "<|turn>", "<|tool_call>", " ,"):
        assert needle in text, needle


def test_vocabulary_reads_as_gemma4(pair, vocab):
    import llama_cpp

    tok, llm = pair
    tokens, _, _ = vocab
    assert tok.kind == "gemma4" and tok.n_vocab == len(tokens) == llm.n_vocab()
    assert tok.add_bos and (tok.bos_id, tok.eos_id) == (BOS, EOS)
    eog = {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)}
    assert {tokens[i] for i in eog} == {"<eos>", "<turn|>", "<|tool_response>"}
    assert set(tok.eog_ids) == eog and all(tok.is_eog(i) for i in eog)


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("special", [False, True])
def test_ids_match_llama_cpp(pair, special, add_bos):
    tok, llm = pair
    mismatches = []
    for text in TEXTS:
        ours = tok.tokenize(text, add_bos=add_bos, special=special)
        ref = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
        if ours != ref:
            mismatches.append((text, ours, ref))
    assert not mismatches, f"{len(mismatches)} of {len(TEXTS)} differ, first: {mismatches[0]}"


def test_the_vocabulary_exercises_every_path(pair, vocab):
    tok, _ = pair
    tokens, _, _ = vocab
    pieces = [tokens[i] for text in TEXTS for i in tok.tokenize(text, add_bos=False, special=True)]
    assert "<0xF0>" in pieces  # byte fallback (an emoji outside the alphabet)
    assert "<0x71>" in pieces  # "x q" joins into "xq", which is no token
    assert "\n" * 8 in pieces and "\n\n\n\n" in pieces  # whole runs, and a merged one
    assert any(p.startswith(SPACE) and len(p) > 3 for p in pieces)  # merges across spaces
    assert "<|turn>" in pieces and '<|"|>' in pieces
    # Runs of newlines: whole when a token, else merged by rank.
    assert [tokens[i] for i in tok.tokenize("\n" * 5, add_bos=False)] == ["\n\n\n\n", "\n"]
    assert [tokens[i] for i in tok.tokenize("\n" * 3, add_bos=False)] == ["\n\n\n"]


@pytest.mark.parametrize("special", [False, True])
def test_bad_utf8_matches_llama_cpp(pair, special):
    tok, llm = pair
    for raw in BAD_UTF8:
        for add_bos in (False, True):
            assert tok.tokenize(raw, add_bos, special) == llm.tokenize(raw, add_bos=add_bos,
                                                                       special=special), raw


def test_code_points_past_unicode_are_replaced_not_fatal(pair):
    # llama.cpp throws out of llama_tokenize here; this engine reads them as bad bytes.
    tok, _ = pair
    assert tok.tokenize(b"\xf4\x90\x80\x80", add_bos=False) == tok.tokenize(
        "\ufffd" * 4, add_bos=False)
    tok.tokenize(b"\xc0\xa0 overlong space", add_bos=False)  # llama.cpp asserts on this one


def test_pieces_match_llama_cpp(pair):
    tok, llm = pair
    for i in range(tok.n_vocab):
        for special in (False, True):
            assert tok.piece(i, special) == llama_piece(llm, i, special), (i, special)


def test_detokenize_matches_llama_cpp(pair):
    tok, llm = pair
    for text in TEXTS:
        for special in (False, True):
            ids = tok.tokenize(text, add_bos=True, special=special)
            for unparse in (False, True):
                ref = llama_detokenize(llm, ids, unparse).decode("utf-8", errors="replace")
                assert tok.detokenize(ids, unparse) == ref, (text, special, unparse)


def test_detokenize_round_trips_where_no_space_is_cleaned(pair):
    tok, _ = pair
    for text in TEXTS:
        # "▁" decodes to a space, and llama.cpp drops the space of " ." or " 's" when decoding.
        if SPACE in text or any(p in text for p in (" .", " ,", " !", " ?", " '")):
            continue
        # Merges can rebuild a control token's text from plain text (the training text has
        # "<|turn>" in it): the id is then the control token's, hidden when decoded.
        if any(c in text for c in CONTROL + ["<|tool_response>"]):
            continue
        assert tok.detokenize(tok.tokenize(text), special=False) == text, text
    assert tok.detokenize(tok.tokenize("Hi , there 's a dog .")) == "Hi, there's a dog."


def test_ollama_names_the_vocabulary_llama(vocab, tmp_path, pair):
    # Ollama's converter writes tokenizer.ggml.model "llama" for Gemma 4 but keeps the merges.
    tok, _ = pair
    ollama = _core.Tokenizer(str(write_vocab(tmp_path / "o.gguf", *vocab, model="llama")))
    no_name = _core.Tokenizer(str(write_vocab(tmp_path / "n.gguf", *vocab, model=None)))
    assert ollama.kind == no_name.kind == "gemma4"
    for text in TEXTS[::7]:
        ids = tok.tokenize(text, special=True)
        assert ollama.tokenize(text, special=True) == no_name.tokenize(text, special=True) == ids


def test_a_vocabulary_of_unknown_kind_is_refused(vocab, tmp_path):
    tokens, types, _ = vocab
    with pytest.raises(GGUFError, match="neither tokenizer.ggml.model nor tokenizer.ggml.merges"):
        _core.Tokenizer(str(write_vocab(tmp_path / "a.gguf", tokens, types, None, model=None)))
    with pytest.raises(GGUFError, match="'gpt2' is not supported.*no tokenizer.ggml.merges"):
        _core.Tokenizer(str(write_vocab(tmp_path / "b.gguf", tokens, types, None, model="gpt2")))
    with pytest.raises(GGUFError, match="tokenizer model 'gemma4' has no tokenizer.ggml.merges"):
        _core.Tokenizer(str(write_vocab(tmp_path / "c.gguf", tokens, types, None)))
    # "llama" without merges is SentencePiece, as llama.cpp reads it; that needs real scores.
    with pytest.raises(GGUFError, match="tokenizer.ggml.scores is missing"):
        _core.Tokenizer(str(write_vocab(tmp_path / "d.gguf", tokens, types, None, model="llama")))


SMALL = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "ab"]
SMALL_TYPES = [3, 3, 3, 2, 1, 1, 1]


@pytest.mark.parametrize("merges, message", [
    (["a b", "ab"], r"merge 1 \('ab'\) is not two pieces separated by a space"),
    (["a b", " ab"], r"merge 1 \(' ab'\) is not two pieces separated by a space"),
    (["a "], r"merge 0 \('a '\) names '', which is not a token"),
    (["a q"], r"merge 0 \('a q'\) names 'q', which is not a token"),
    (["ab b a"], r"names 'b a', which is not a token"),
    ([""], r"merge 0 \(''\) is not two pieces"),
])
def test_malformed_merges_are_refused(tmp_path, merges, message):
    path = write_vocab(tmp_path / "bad.gguf", SMALL, SMALL_TYPES, merges)
    with pytest.raises(ValueError, match=message):
        _core.Tokenizer(str(path))


def test_merges_must_be_strings(tmp_path):
    path = tmp_path / "ints.gguf"
    w = gguf.GGUFWriter(str(path), "gemma4")
    w.add_tokenizer_model("gemma4")
    w.add_token_list(SMALL)
    w.add_token_types(SMALL_TYPES)
    w.add_array("tokenizer.ggml.merges", [1, 2])
    w.add_bos_token_id(BOS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="tokenizer.ggml.merges must be an array of strings"):
        _core.Tokenizer(str(path))


def test_a_small_vocabulary_merges_by_rank(tmp_path):
    import llama_cpp

    # "b a" outranks "a b": "aba" -> a + ba -> aba, never ab + a.
    tokens = SMALL + ["ba", "aba"]
    path = write_vocab(tmp_path / "s.gguf", tokens, SMALL_TYPES + [1, 1],
                       ["b a", "a b", "a ba"])
    tok = _core.Tokenizer(str(path))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert tok.tokenize("aba", add_bos=False) == [tokens.index("aba")]
    assert tok.tokenize("abab", add_bos=False) == [tokens.index("aba"), tokens.index("b")]
    # No byte tokens here: a character without a token is dropped, as llama.cpp drops it.
    assert tok.tokenize("a-b", add_bos=False) == [tokens.index("a"), tokens.index("b")]
    for text in ("aba", "abab", "a-b", "babab ab", "ab\n\nba"):
        assert tok.tokenize(text) == llm.tokenize(text.encode()), text


def test_show_names_the_byte_pair_vocabulary(vocab, tmp_path):
    from pyengine.cli import describe

    rows = describe(str(write_vocab(tmp_path / "o.gguf", *vocab, model="llama"))).splitlines()
    assert any("llama (read as Gemma 4's byte-pair vocabulary" in r for r in rows)
    assert any("add_bos_token" in r and "always adds bos" in r for r in rows)


# -- Gemma 4's real vocabulary ---------------------------------------------------------------

REAL_VOCAB = "models/ggml-vocab-gemma-4.gguf"


@pytest.fixture(scope="module")
def real_pair(llama_cpp_tree):
    """Our tokenizer and llama.cpp's on Gemma 4's real vocabulary (262144 pieces and their
    merges: the vocab-only file llama.cpp ships for its own tokenizer tests)."""
    import llama_cpp

    path = llama_cpp_tree / REAL_VOCAB
    return _core.Tokenizer(str(path)), llama_cpp.Llama(model_path=str(path), vocab_only=True,
                                                        verbose=False), path


@pytest.mark.parametrize("special", [False, True])
def test_real_vocabulary_ids_match_llama_cpp(real_pair, special):
    ours, llm, _ = real_pair
    assert ours.kind == "gemma4" and ours.n_vocab == 262144
    for text in TEXTS:
        assert list(ours.tokenize(text, True, special)) == llm.tokenize(
            text.encode(), add_bos=True, special=special), text[:40]


def test_real_vocabulary_passes_llama_cpps_own_test_vectors(real_pair):
    """llama.cpp's test-tokenizer-0 vectors for this vocabulary (.inp texts, .out ids, no bos)."""
    ours, _, path = real_pair
    texts = path.with_name(path.name + ".inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")
    ids = path.with_name(path.name + ".out").read_text("utf-8").split("\n")
    assert len(texts) >= 40
    for text, want in zip(texts, ids):
        assert list(ours.tokenize(text, False, False)) == [int(x) for x in want.split()], text
