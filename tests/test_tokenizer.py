"""Token ids and text agree with llama.cpp's tokenizer on a varied corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import oracle
from pyengine import Engine, _core

CORPUS = json.loads((Path(__file__).parent / "data" / "tokenizer_corpus.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def pair(tiny_f32):
    return Engine(tiny_f32, n_ctx=64), oracle(tiny_f32, n_ctx=64, logits_all=False)


def test_corpus_is_varied():
    assert len(CORPUS) >= 200 and "" in CORPUS
    text = "".join(CORPUS)
    for needle in ("é", "日", "😀", "\t", "\n", "   ", "<start_of_turn>"):
        assert needle in text, needle


@pytest.mark.parametrize("special", [False, True])
def test_ids_match_llama_cpp(pair, special):
    eng, llm = pair
    mismatches = []
    for text in CORPUS:
        ours = eng.tokenize(text, add_bos=True, special=special)
        ref = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        if ours != ref:
            mismatches.append((text, ours, ref))
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ, first: {mismatches[0]}"


def test_without_bos(pair):
    eng, llm = pair
    for text in CORPUS[:50]:
        assert eng.tokenize(text, add_bos=False) == llm.tokenize(text.encode(), add_bos=False)


def test_tokenizer_of_the_file_alone(pair, tiny_f32):
    # _core.Tokenizer reads only tokenizer.ggml.*: the same ids as the engine's tokenizer.
    eng, _ = pair
    tok = _core.Tokenizer(str(tiny_f32))
    assert tok.kind == "spm" and tok.n_vocab == eng._core.n_vocab
    for text in CORPUS:
        for special in (False, True):
            ids = eng.tokenize(text, add_bos=True, special=special)
            assert tok.tokenize(text, add_bos=True, special=special) == ids
            assert tok.detokenize(ids) == eng.detokenize(ids)


def llama_detokenize(llm, ids: list[int], special: bool) -> bytes:
    """llama.cpp's own llama_detokenize (the high-level wrapper decodes piece by piece)."""
    import ctypes

    import llama_cpp

    arr = (llama_cpp.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(64 * len(ids) + 64)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), False, special)
    assert n >= 0
    return buf.raw[:n]


def test_detokenize_matches_llama_cpp(pair):
    eng, llm = pair
    for text in CORPUS:
        for special in (False, True):
            ids = eng.tokenize(text, add_bos=True, special=special)
            ref = llama_detokenize(llm, ids, special=False).decode("utf-8", errors="replace")
            assert eng.detokenize(ids) == ref, text


def test_detokenize_round_trips(pair):
    eng, _ = pair
    for text in CORPUS:
        if "\u2581" in text:  # the escaped-space piece itself decodes to a space, by design
            continue
        assert eng.detokenize(eng.tokenize(text, add_bos=True)) == text


def test_stream_pieces_join_to_the_text(pair):
    eng, _ = pair
    for text in CORPUS:
        ids = eng.tokenize(text, add_bos=False)
        assert "".join(eng._core.stream_pieces(ids)) == eng.detokenize(ids)
