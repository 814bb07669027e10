"""``pyengine perplexity``: llama-perplexity's chunking and arithmetic, checked against llama.cpp.

The text is ``tests/data/perplexity_en.txt``: original English prose written for this project
(several topics, no lists or code), long enough for 10 chunks of 512 tokens with the real
Gemma 3 tokenizer (5,208 tokens), so the real-model comparison of ``scripts/perplexity_check.py``
has 10 chunks to average over.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import oracle

from pyengine import Engine
from pyengine.perplexity import (chunk_ids, count_chunks, eta_text, perplexity,
                                 perplexity_of_tokens, read_text_file, special_bos, token_nll)

TEXT_FILE = Path(__file__).parent / "data" / "perplexity_en.txt"
# Four times the tiny model's 32-position window, so every scored position reads past the
# sliding layers' window and the global layers see the whole chunk.
N_CTX = 128
N_CHUNKS = 6


def log_softmax_nll(z: np.ndarray, target: int) -> float:
    """A float64 negative log-likelihood: the independent reference for the tests."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max()
    return float(m + math.log(np.exp(z - m).sum()) - z[target])


def llama_perplexity_reference(logits_of, tokens: list[int], n_ctx: int, bos: int,
                               n_chunks: int) -> tuple[list[float], float, float]:
    """llama-perplexity's loop transcribed on its own: (running values, PPL, its +/-)."""
    first = n_ctx // 2
    nlls, running = [], []
    for c in range(min(n_chunks, len(tokens) // n_ctx)):
        ids = tokens[c * n_ctx:(c + 1) * n_ctx]
        ids = [bos] + ids[1:]
        z = logits_of(ids)
        for p in range(first, n_ctx - 1):
            nlls.append(log_softmax_nll(z[p], tokens[c * n_ctx + p + 1]))
        running.append(math.exp(np.mean(nlls)))
    v = np.array(nlls)
    ppl = math.exp(v.mean())
    return running, ppl, ppl * math.sqrt(v.var() / (len(v) - 1))


# ------------------------------------------------------------------------------- chunking

def test_chunk_count_follows_llama_perplexity():
    # len // n_ctx whole chunks, the remainder dropped; --chunks caps it; under 2*n_ctx refused.
    assert count_chunks(35, 10) == 3
    assert count_chunks(20, 10) == 2
    assert count_chunks(35, 10, n_chunks=2) == 2
    assert count_chunks(35, 10, n_chunks=9) == 3
    with pytest.raises(ValueError, match="only 19 tokens.*at least 20"):
        count_chunks(19, 10)
    with pytest.raises(ValueError, match="at least 20"):
        count_chunks(19, 10, n_chunks=1)  # the minimum holds whatever --chunks asks
    for bad in (0, -1, 2, 3.5, True):
        with pytest.raises(ValueError, match="context"):
            count_chunks(100, bad)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="chunks"):
            count_chunks(100, 10, n_chunks=bad)


def test_each_chunk_starts_with_bos_in_place_of_its_first_token():
    tokens = [2] + list(range(100, 134))  # 35 tokens: BOS then the text
    assert chunk_ids(tokens, 0, 10, bos=2) == tokens[:10]
    assert chunk_ids(tokens, 1, 10, bos=2) == [2] + tokens[11:20]
    assert chunk_ids(tokens, 2, 10, bos=2) == [2] + tokens[21:30]
    assert chunk_ids(tokens, 1, 10, bos=None) == tokens[10:20]  # a vocabulary without BOS
    with pytest.raises(ValueError):
        chunk_ids(tokens, 3, 10, bos=2)  # would run into the dropped remainder


@pytest.mark.parametrize("n_ctx", [10, 7])
def test_scores_the_second_half_of_each_chunk(n_ctx):
    # Random logits that depend on the chunk and the position; the result must equal the
    # transcription of llama.cpp's loop, with exactly n_ctx - n_ctx//2 - 1 tokens per chunk.
    n_vocab, bos = 50, 2
    rng = np.random.default_rng(n_ctx)
    tokens = [bos] + rng.integers(3, n_vocab, 4 * n_ctx + 3).tolist()
    table = rng.normal(0, 3, (5, n_ctx, n_vocab)).astype(np.float32)
    calls: list[list[int]] = []

    def logits_of(ids: list[int]) -> np.ndarray:
        calls.append(list(ids))
        return table[len(calls) - 1]

    res = perplexity_of_tokens(logits_of, tokens, n_ctx, bos)
    assert res.n_chunks == 4 and res.n_tokens == len(tokens)
    assert res.n_scored == 4 * (n_ctx - n_ctx // 2 - 1)
    assert calls == [[bos] + tokens[c * n_ctx + 1:(c + 1) * n_ctx] for c in range(4)]

    replay = iter(table)
    running, ppl, err = llama_perplexity_reference(lambda ids: next(replay), tokens, n_ctx, bos,
                                                   4)
    assert res.running_ppl == pytest.approx(running, rel=1e-6)
    assert res.ppl == pytest.approx(ppl, rel=1e-6)
    assert res.ppl_error == pytest.approx(err, rel=1e-6)
    assert res.running_ppl[-1] == res.ppl
    first = n_ctx // 2
    own = [math.exp(np.mean([log_softmax_nll(table[c][p], tokens[c * n_ctx + p + 1])
                             for p in range(first, n_ctx - 1)])) for c in range(4)]
    assert res.chunk_ppl == pytest.approx(own, rel=1e-6)


def test_nll_is_exact_for_large_and_peaked_logits():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 8, (70, 3000)).astype(np.float32)
    z[5] += 1e4  # a large offset: the max is subtracted before exp
    z[9, 17] = 200.0  # one dominant logit
    targets = rng.integers(0, 3000, 70)
    targets[9] = 17
    got = token_nll(z, targets)
    want = [log_softmax_nll(z[i], int(t)) for i, t in enumerate(targets)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got[9] == pytest.approx(0.0, abs=1e-6)


def test_eta_is_printed_as_llama_perplexity_prints_it():
    assert eta_text(0.5, 10) == "0.08 minutes"  # 5 s, whole seconds as llama.cpp counts them
    assert eta_text(2.0, 1900) == "1 hours 3.33 minutes"


def test_special_bos_is_the_token_the_tokenizer_adds():
    assert special_bos(lambda t, add: ([2] if add else []) + [7]) == 2
    assert special_bos(lambda t, add: [7]) is None
    with pytest.raises(ValueError, match="EOS"):
        special_bos(lambda t, add: [7] + ([1] if add else []))


def test_text_file_is_read_as_llama_perplexity_reads_it(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"line one\r\nline two\n\n")
    assert read_text_file(str(f)) == "line one\r\nline two\n"  # one newline dropped, \r kept
    f.write_bytes(b"no newline")
    assert read_text_file(str(f)) == "no newline"
    f.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_text_file(str(f))
    with pytest.raises(FileNotFoundError, match="text file not found"):
        read_text_file(str(tmp_path / "missing.txt"))


# ------------------------------------------------------------------------ against llama.cpp

@pytest.fixture(scope="module")
def text() -> str:
    return read_text_file(str(TEXT_FILE))


def test_perplexity_matches_llama_cpp_on_the_f32_model(tiny_f32, text):
    """Ours against llama-perplexity's computation on llama.cpp's own tokens and logits.

    Bounds, from what the F32 engines' logit differences imply (measured on these 6 chunks):
    the logits differ by at most 5.5e-4 relative L2 (the parity table's F32 row: 8e-4), which
    moves a scored token's NLL by 1.8e-3 on average (1.1e-2 at most). Even if every NLL moved
    the same way, ln(PPL) would move by that mean, so each running value and the final PPL may
    differ by 2e-3 relative (measured: 2.5e-4 at most). The uncertainty, PPL * std(NLL) /
    sqrt(n - 1), moves by PPL's change plus std's, which is at most std(NLL difference) =
    2.5e-3 of std(NLL) = 5.0: 5e-4, hence 3e-3 (measured: 2.5e-4).
    """
    llm = oracle(tiny_f32, n_ctx=N_CTX)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)

    def llama_logits(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)

    running, ppl, err = llama_perplexity_reference(llama_logits, tokens, N_CTX, llm.token_bos(),
                                                   N_CHUNKS)
    eng = Engine(tiny_f32, n_ctx=N_CTX, max_batch=1, prefix_cache=False)
    try:
        assert eng.tokenize(text) == tokens
        res = perplexity(eng, text, n_ctx=N_CTX, n_chunks=N_CHUNKS)
    finally:
        eng.close()
    assert res.n_chunks == len(running) == N_CHUNKS
    assert res.n_scored == N_CHUNKS * (N_CTX // 2 - 1)
    assert res.running_ppl == pytest.approx(running, rel=2e-3)
    assert res.ppl == pytest.approx(ppl, rel=2e-3)
    assert res.ppl_error == pytest.approx(err, rel=3e-3)


def test_too_short_text_and_too_long_context_are_refused(tiny_f32):
    eng = Engine(tiny_f32, n_ctx=64, max_batch=1)
    try:
        with pytest.raises(ValueError, match="needs at least 128"):
            perplexity(eng, "A short text.", n_ctx=64)
        with pytest.raises(ValueError, match="engine's context is 64"):
            perplexity(eng, "A short text.", n_ctx=65)
    finally:
        eng.close()


# ------------------------------------------------------------------------------ the CLI

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Outside the source tree, so the installed package (with its extension) is imported.
    return subprocess.run([sys.executable, "-m", "pyengine", "perplexity", *args], check=False,
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent,
                          env=env)


def test_cli_prints_like_llama_perplexity(tiny_f32, text):
    proc = run_cli(str(tiny_f32), str(TEXT_FILE), "--ctx", "64", "--chunks", "3",
                   "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    with Engine(tiny_f32, n_ctx=64, max_batch=1, prefix_cache=False) as eng:
        res = perplexity(eng, text, n_ctx=64, n_chunks=3)
    assert proc.stdout == "".join(f"[{i + 1}]{v:.4f}," for i, v in
                                  enumerate(res.running_ppl)) + "\n"
    assert f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}" in proc.stderr
    assert "calculating perplexity over 3 chunks, n_ctx=64" in proc.stderr


def test_cli_json_and_a_store_name(tiny_f32, tmp_path):
    # MODEL as a name of the project's registry, as the other subcommands accept.
    shutil.copy(tiny_f32, tmp_path / "tiny.gguf")
    (tmp_path / "registry.json").write_text(json.dumps(
        {"models": {"tiny-ppl:f32": {"file": "tiny.gguf"}}}))
    env = {**os.environ, "PYENGINE_MODELS": str(tmp_path)}
    proc = run_cli("tiny-ppl:f32", str(TEXT_FILE), "--ctx", "64", "--chunks", "2", "--json",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_ctx"] == 64 and out["n_chunks"] == 2 and out["n_scored"] == 2 * 31
    assert len(out["running_ppl"]) == len(out["chunk_ppl"]) == 2
    assert out["ppl"] == out["running_ppl"][-1] and out["ppl_error"] > 0
    assert Path(out["model"]).name == "tiny.gguf"


@pytest.mark.parametrize("args, message", [
    (["--ctx", "0"], "at least 3"),
    (["--ctx", "-4"], "at least 3"),
    (["--chunks", "0"], "--chunks must be a positive integer"),
    (["--ctx", "5000"], "exceeds the model's training context"),
])
def test_cli_bad_options_are_clean_errors(tiny_f32, args, message):
    proc = run_cli(str(tiny_f32), str(TEXT_FILE), *args)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_files_and_short_text_are_clean_errors(tiny_f32, tmp_path):
    proc = run_cli(str(tiny_f32), str(tmp_path / "missing.txt"))
    assert proc.returncode == 1 and "text file not found" in proc.stderr
    proc = run_cli(str(tmp_path / "missing.gguf"), str(TEXT_FILE))
    assert proc.returncode == 1 and "model not found" in proc.stderr
    short = tmp_path / "short.txt"
    short.write_text("Too short for two chunks of 512 tokens.\n")
    proc = run_cli(str(tiny_f32), str(short))
    assert proc.returncode == 1 and "needs at least 1024" in proc.stderr
    assert "Traceback" not in proc.stderr
