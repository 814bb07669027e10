"""Generation: sampling options, determinism, stop conditions, streaming and chat format."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyengine import Engine, PyEngineError
from pyengine.chat import format_gemma


@pytest.fixture(scope="module")
def eng(tiny_f32) -> Engine:
    return Engine(tiny_f32, n_ctx=256)


def test_same_seed_same_output(eng):
    a = eng.generate("Hello there", max_tokens=24, temperature=1.0, seed=42, ignore_eos=True)
    b = eng.generate("Hello there", max_tokens=24, temperature=1.0, seed=42, ignore_eos=True)
    c = eng.generate("Hello there", max_tokens=24, temperature=1.0, seed=43, ignore_eos=True)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_greedy_is_argmax_of_logits(eng):
    prompt = eng.tokenize("A short prompt")
    out = eng.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True)
    seq = list(prompt)
    for tok in out.tokens:
        assert tok == int(np.argmax(eng.logits(seq)[-1]))
        seq.append(tok)


def test_top_k_1_equals_greedy(eng):
    greedy = eng.generate("Once", max_tokens=12, temperature=0, ignore_eos=True)
    topk1 = eng.generate("Once", max_tokens=12, temperature=1.5, top_k=1, seed=1, ignore_eos=True)
    assert greedy.tokens == topk1.tokens


def test_top_k_restricts_to_best_tokens(eng):
    prompt = eng.tokenize("The cat")
    best3 = set(np.argsort(eng.logits(prompt)[-1])[-3:].tolist())
    for seed in range(20):
        out = eng.generate(prompt, max_tokens=1, temperature=5.0, top_k=3, top_p=1.0, seed=seed,
                           ignore_eos=True)
        assert out.tokens[0] in best3


def test_min_p_and_top_p_cut_the_tail(eng):
    prompt = eng.tokenize("The dog")
    logits = eng.logits(prompt)[-1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    allowed_min_p = set(np.nonzero(p >= 0.2 * p.max())[0].tolist())
    order = np.argsort(-p)
    cum = np.cumsum(p[order])
    allowed_top_p = set(order[: int(np.searchsorted(cum, 0.5)) + 1].tolist())
    for seed in range(20):
        a = eng.generate(prompt, max_tokens=1, temperature=3.0, top_k=0, top_p=1.0, min_p=0.2,
                         seed=seed, ignore_eos=True)
        b = eng.generate(prompt, max_tokens=1, temperature=3.0, top_k=0, top_p=0.5, seed=seed,
                         ignore_eos=True)
        assert a.tokens[0] in allowed_min_p
        assert b.tokens[0] in allowed_top_p


def test_repeat_penalty_changes_greedy_choice(eng):
    prompt = eng.tokenize("repeat repeat repeat")
    plain = eng.generate(prompt, max_tokens=24, temperature=0, ignore_eos=True)
    penal = eng.generate(prompt, max_tokens=24, temperature=0, repeat_penalty=100.0,
                         repeat_last_n=-1, ignore_eos=True)
    # With a huge penalty over the whole history, greedy decoding cannot repeat a token it
    # already produced as long as unpenalised candidates exist.
    assert len(set(penal.tokens)) == len(penal.tokens)
    assert plain.tokens != penal.tokens


def test_max_tokens_and_timings(eng):
    out = eng.generate("Count", max_tokens=5, temperature=0, ignore_eos=True)
    assert out.eval_count == 5 and len(out.tokens) == 5 and out.done_reason == "length"
    assert out.prompt_eval_count == len(eng.tokenize("Count"))
    assert out.prompt_eval_duration > 0 and out.eval_duration > 0
    assert out.total_duration >= out.prompt_eval_duration + out.eval_duration


def test_stop_string_cuts_output(eng):
    full = eng.generate("Stop test", max_tokens=20, temperature=0, ignore_eos=True)
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = eng.generate("Stop test", max_tokens=20, temperature=0, stop=[stop], ignore_eos=True)
    assert cut.done_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    streamed = "".join(c.text for c in eng.stream("Stop test", max_tokens=20, temperature=0,
                                                    stop=[stop], ignore_eos=True))
    assert streamed == cut.text


def with_eos(src, dst, eos_id: int):
    """A copy of a model file whose tokenizer.ggml.eos_token_id (a u32) is eos_id."""
    data = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.eos_token_id"
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    assert int.from_bytes(data[at:at + 4], "little") == 4  # GGUF type u32
    data[at + 4:at + 8] = eos_id.to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return dst


def test_eos_stops_unless_ignored(eng, tiny_f32, tmp_path):
    plain = eng.generate("End here", max_tokens=8, temperature=0, ignore_eos=True).tokens
    k = next(i for i in range(1, 8) if plain[i] not in plain[:i])
    patched = Engine(with_eos(tiny_f32, tmp_path / "eos.gguf", plain[k]), n_ctx=256)
    out = patched.generate("End here", max_tokens=8, temperature=0)
    assert out.done_reason == "stop" and out.tokens == plain[: k + 1]
    assert out.text == eng.detokenize(plain[:k])  # the end token itself is not text
    again = patched.generate("End here", max_tokens=8, temperature=0, ignore_eos=True)
    assert again.tokens == plain and again.done_reason == "length"


def test_stream_never_splits_utf8(eng):
    # Characters missing from the vocabulary are spelled by byte tokens, one byte at a time.
    text = "日本語 😀 naïve"
    ids = eng.tokenize(text, add_bos=False)
    assert len(ids) > len(text)  # byte fallback happened
    pieces = eng._core.stream_pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert "" in pieces  # partial characters were held back...
    assert all("\ufffd" not in p for p in pieces)  # ...and never emitted broken


def test_stream_chunks_are_whole_characters(eng):
    for c in eng.stream("日本", max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=3,
                        ignore_eos=True):
        if not c.done:
            assert "\ufffd" not in c.text


def test_stream_final_chunk(eng):
    chunks = list(eng.stream("Hi", max_tokens=4, temperature=0, ignore_eos=True))
    assert [c.done for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert final.completion is not None and final.completion.text == "".join(c.text for c in chunks)
    assert final.completion.tokens == [c.token for c in chunks]


def test_threads_share_one_engine(eng):
    ref = eng.generate("Threads", max_tokens=10, temperature=0, ignore_eos=True).tokens
    results: list[list[int]] = []

    def work() -> None:
        results.append(eng.generate("Threads", max_tokens=10, temperature=0,
                                    ignore_eos=True).tokens)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [ref] * 4


def test_interleaved_streams_stay_correct(eng):
    ref_a = eng.generate("Alpha", max_tokens=8, temperature=0, ignore_eos=True).tokens
    ref_b = eng.generate("Beta beta", max_tokens=8, temperature=0, ignore_eos=True).tokens
    sa = eng.stream("Alpha", max_tokens=8, temperature=0, ignore_eos=True)
    sb = eng.stream("Beta beta", max_tokens=8, temperature=0, ignore_eos=True)
    got_a, got_b = [], []
    for a, b in zip(sa, sb):
        got_a.append(a.token)
        got_b.append(b.token)
    assert got_a == ref_a and got_b == ref_b


@pytest.mark.parametrize("bad", [
    {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}, {"min_p": 2},
    {"max_tokens": "ten"}, {"repeat_penalty": 0}, {"seed": 1.5}, {"stop": [1]},
    {"no_such_option": 1}, {"temperature": float("nan")},
])
def test_bad_options_raise_value_error(eng, bad):
    with pytest.raises(ValueError):
        eng.generate("x", **bad)


def test_prompt_longer_than_context_is_refused(eng):
    with pytest.raises(PyEngineError, match="context"):
        eng.generate([2] + [500] * 300, max_tokens=1)
    with pytest.raises(PyEngineError, match="vocabulary"):
        eng.logits([2, eng.n_vocab + 5])
    with pytest.raises(PyEngineError):
        eng.logits([])


def test_absurd_thread_count_is_refused(tiny_f32):
    with pytest.raises(ValueError, match="n_threads"):
        Engine(tiny_f32, n_threads=100_000)


def test_context_full_ends_with_length(tiny_f32):
    small = Engine(tiny_f32, n_ctx=16)
    out = small.generate([2] + [500] * 10, max_tokens=100, temperature=0, ignore_eos=True)
    assert out.done_reason == "length" and out.eval_count == 6


def test_chat_format_folds_system_into_first_user_turn():
    text = format_gemma([
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ])
    assert text == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ValueError):
        format_gemma([{"role": "wizard", "content": "x"}])


def test_chat_tokenizes_turn_markers_as_specials(eng):
    ids = eng.chat_prompt([{"role": "user", "content": "Hi"}])
    assert ids[0] == 2 and ids[1] == 105 and ids.count(105) == 2 and ids.count(106) == 1
    last = len(ids) - 1 - ids[::-1].index(105)
    assert eng.detokenize(ids[last + 1:]) == "model\n"
    out = eng.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert out.prompt_eval_count + out.cached_tokens == len(ids)
    assert out.eval_count == len(out.tokens) and 1 <= out.eval_count <= 4
    assert out.tokens == eng.generate(ids, max_tokens=4, temperature=0).tokens


def test_the_native_core_meets_the_backend_contract(eng):
    from pyengine.core_protocol import BackendCore, CoreRequest
    from pyengine.options import GenerateOptions

    core = eng._core
    assert isinstance(core, BackendCore)
    opts = GenerateOptions.from_kwargs(max_tokens=3, temperature=0, ignore_eos=True, seed=7,
                                       stop=["zz"]).native()
    assert (opts.max_tokens, opts.temperature, opts.seed, opts.stop, opts.ignore_eos) == \
        (3, 0.0, 7, ["zz"], True)
    req = core.submit(eng.tokenize("Hi"), opts)
    assert isinstance(req, CoreRequest)
    tokens, done = [], False
    while not done:
        token, _text, done, _reason = req.next()  # waits (no timeout): never None
        if token >= 0:
            tokens.append(token)
    assert req.finished
    assert tokens == eng.generate("Hi", max_tokens=3, temperature=0, ignore_eos=True).tokens
