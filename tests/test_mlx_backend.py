"""The MLX backend: logits against llama.cpp and the native backend, greedy generation, the
Engine surface (streaming, chat, timings, cancellation, concurrency, prefix reuse), the
conversion cache and MLX folders, the server and the A/B harness with ``--backend mlx``.

mlx[cpu] runs on Linux x86-64 single-threaded, so the models are the tiny presets; the whole
file is skipped where mlx and mlx-lm are not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from support import rel_err

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from conftest import oracle, oracle_agreement, prompt_ids  # noqa: E402
from pyengine import Engine, PyEngineError  # noqa: E402
from pyengine.server.testing import ServerProcess  # noqa: E402

# (preset, dtype, max relative L2 error per position and min top-1 agreement against llama.cpp:
# the native core's bounds for each model family; then the largest error against the native
# core itself), MLX computing in float32. Against the native core, measured on these prompts:
# F32 1.1e-3 / 7.8e-4 (tiny / tiny-3n), F16 1.9e-3 / 1.7e-3, Q8_0 3.8e-2 / 4.4e-2 (MLX
# multiplies the dequantized weights by float activations; the native core quantizes the
# activations to Q8_0 blocks as llama.cpp does, which is most of that difference).
BOUNDS = [("tiny", "f32", 5e-3, 0.99, 2.5e-3), ("tiny", "f16", 5e-3, 0.99, 5e-3),
          ("tiny", "q8_0", 5e-2, 0.95, 5e-2), ("tiny-3n", "f32", 5e-3, 0.99, 2.5e-3),
          ("tiny-3n", "f16", 1e-2, 0.99, 5e-3), ("tiny-3n", "q8_0", 1e-1, 0.85, 8e-2)]
N_PROMPT = 250  # several times the window (32)
N_PROMPTS = 2


@pytest.fixture(autouse=True)
def mlx_cache(tmp_path_factory, monkeypatch):
    """Conversions go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("PYENGINE_MLX_CACHE", str(tmp_path_factory.getbasetemp() / "mlx-cache"))




@pytest.mark.parametrize("preset,dtype,max_err,min_top1,max_err_native", BOUNDS)
def test_logits_match_llama_cpp_and_native(make_model, preset, dtype, max_err, min_top1,
                                           max_err_native):
    path = make_model(preset, dtype)
    llm = oracle(path)
    with Engine(path, n_ctx=512, backend="mlx", dtype="float32") as mlx, \
            Engine(path, n_ctx=512, backend="native") as native:
        assert mlx.backend == "mlx" and mlx.config["arch"] == native.config["arch"]
        errs, errs_native, hits = [], [], []
        for seed in range(N_PROMPTS):
            ids = prompt_ids(mlx.n_vocab, N_PROMPT, seed)
            ours = mlx.logits(ids).astype(np.float64)
            assert ours.shape == (len(ids), mlx.n_vocab)
            llm.reset()
            llm.eval(ids)
            ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
            errs.append(rel_err(ours, ref))
            hits.append(ours.argmax(1) == ref.argmax(1))
            errs_native.append(rel_err(ours, native.logits(ids).astype(np.float64)))
    err, top1 = np.concatenate(errs), float(np.concatenate(hits).mean())
    assert err.max() <= max_err, f"{preset}/{dtype}: vs llama.cpp {err.max():.2e}"
    assert top1 >= min_top1, f"{preset}/{dtype}: top-1 agreement {top1:.3f}"
    worst = np.concatenate(errs_native).max()
    assert worst <= max_err_native, f"{preset}/{dtype}: vs native {worst:.2e}"


@pytest.mark.parametrize("preset", ["tiny", "tiny-3n"])
def test_greedy_generation_matches_llama_cpp_and_native(make_model, preset):
    path = make_model(preset, "f32")
    llm = oracle(path)
    with Engine(path, n_ctx=512, backend="mlx", dtype="float32") as mlx, \
            Engine(path, n_ctx=512, backend="native") as native:
        text = mlx.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time")
        assert text == native.tokenize("The quick brown fox jumps over the lazy dog. "
                                       "Once upon a time")
        for prompt in (text, prompt_ids(mlx.n_vocab, 120, seed=7)):
            out = mlx.generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True)
            llm.reset()
            llm.eval(prompt)
            ref = []
            for _ in range(32):
                ref.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([ref[-1]])
            assert out.tokens == ref
            assert out.tokens == native.generate(prompt, max_tokens=32, temperature=0.0,
                                                 ignore_eos=True).tokens


@pytest.fixture(scope="module")
def mlx_tiny(make_model, tmp_path_factory):
    path = make_model("tiny", "q8_0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYENGINE_MLX_CACHE", str(tmp_path_factory.mktemp("mlx-cache-module")))
        with Engine(path, n_ctx=512, backend="mlx") as eng:
            yield eng


def test_stream_chat_timings_and_sampling(mlx_tiny):
    eng = mlx_tiny
    messages = [{"role": "user", "content": "Hello there"}]
    chunks = list(eng.chat_stream(messages, max_tokens=12, temperature=0, ignore_eos=True))
    final = chunks[-1]
    assert final.done and final.completion is not None and final.done_reason == "length"
    c = final.completion
    assert c.eval_count == 12 and len(c.tokens) == 12
    assert c.text == "".join(ch.text for ch in chunks)
    assert c.prompt_eval_count == len(eng.chat_prompt(messages)) - c.cached_tokens
    assert c.prompt_eval_duration > 0 and c.eval_duration > 0
    assert c.total_duration >= c.prompt_eval_duration + c.eval_duration
    # Seeded sampling is reproducible; a stop string cuts the text.
    a = eng.generate("Once upon a time", max_tokens=16, temperature=0.9, seed=5, ignore_eos=True)
    b = eng.generate("Once upon a time", max_tokens=16, temperature=0.9, seed=5, ignore_eos=True)
    assert a.tokens == b.tokens
    cut = a.text[len(a.text) // 2:][:3]
    if cut.strip():
        stopped = eng.generate("Once upon a time", max_tokens=16, temperature=0.9, seed=5,
                               ignore_eos=True, stop=[cut])
        assert stopped.done_reason == "stop" and cut not in stopped.text


def test_concurrent_requests_equal_alone_and_cancel(mlx_tiny):
    eng = mlx_tiny
    ps = [prompt_ids(eng.n_vocab, n, seed=n) for n in (5, 40, 90)]
    alone = [eng.generate(p, max_tokens=10, temperature=0, ignore_eos=True).tokens for p in ps]
    got: list[list[int] | None] = [None] * len(ps)

    def work(i: int) -> None:
        got[i] = eng.generate(ps[i], max_tokens=10, temperature=0, ignore_eos=True).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    stream = eng.stream(ps[0], max_tokens=200, temperature=0, ignore_eos=True)
    next(iter(stream))
    stream.close()  # a client going away mid-stream
    for t in threads:
        t.join()
    assert got == alone
    st = eng.stats()
    assert st["max_step_sequences"] > 1 and st["running"] == 0 and st["waiting"] == 0
    assert st["cancelled"] >= 1
    # Decode steps were shared: more tokens than batched forward passes.
    assert st["decode_tokens"] > st["decode_steps"]


def test_prefix_cache_reuses_a_shared_prompt(mlx_tiny):
    eng = mlx_tiny
    shared = prompt_ids(eng.n_vocab, 100, seed=11)
    first = eng.generate(shared + [400, 401], max_tokens=6, temperature=0, ignore_eos=True)
    assert first.cached_tokens < 16  # at most the BOS shared with earlier prompts
    second = eng.generate(shared + [500, 501, 502], max_tokens=6, temperature=0,
                          ignore_eos=True)
    assert second.cached_tokens == len(shared) // 16 * 16  # the first prompt's checkpoint
    with Engine(eng.path, n_ctx=512, backend="mlx", prefix_cache=False) as cold:
        assert second.tokens == cold.generate(shared + [500, 501, 502], max_tokens=6,
                                              temperature=0, ignore_eos=True).tokens


def test_async_stream(mlx_tiny):
    import asyncio

    async def main() -> list[str]:
        texts = []
        async for chunk in mlx_tiny.astream("Hello", max_tokens=5, temperature=0,
                                            ignore_eos=True):
            texts.append(chunk.text)
        return texts

    texts = asyncio.run(main())
    assert len(texts) == 5


def test_embeddings_match_native(make_model):
    path = make_model("tiny", "f32")
    with Engine(path, n_ctx=512, backend="mlx", dtype="float32") as mlx, \
            Engine(path, n_ctx=512, backend="native") as native:
        a, b = mlx.embed("The quick brown fox"), native.embed("The quick brown fox")
    assert a.shape == b.shape and np.linalg.norm(a - b) <= 5e-3


def test_conversion_is_cached_and_the_folder_loads(make_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYENGINE_MLX_CACHE", str(tmp_path / "cache"))
    path = make_model("tiny-3n", "f16")
    ids = prompt_ids(3072, 20)
    with Engine(path, n_ctx=512, backend="mlx") as eng:
        assert eng.config["mlx_dtype"] == "float16"  # the file's own type by default
        first = eng.logits(ids)
    (entry,) = (tmp_path / "cache").iterdir()
    config = json.loads((entry / "config.json").read_text())
    assert config["model_type"] == "gemma3n" and config["pyengine"]["gguf"] == str(path)
    assert entry.name.startswith(config["pyengine"]["sha256"])
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    with Engine(path, n_ctx=512, backend="mlx") as eng:  # from the cache: not rewritten
        np.testing.assert_array_equal(eng.logits(ids), first)
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp
    with Engine(entry, n_ctx=512, backend="mlx") as eng:  # the folder itself
        np.testing.assert_array_equal(eng.logits(ids), first)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(PyEngineError, match="config.json"):
        Engine(bare, backend="mlx")


def test_bad_requests_are_clean_errors(mlx_tiny):
    with pytest.raises(PyEngineError, match="empty"):
        mlx_tiny.generate([], max_tokens=2)
    with pytest.raises(PyEngineError, match="outside the vocabulary"):
        mlx_tiny.generate([2, 10**6], max_tokens=2)
    with pytest.raises(PyEngineError, match="does not fit"):
        mlx_tiny.logits([2] * 600)
    with pytest.raises(ValueError, match="dtype"):
        Engine(mlx_tiny.path, backend="mlx", dtype="int4")


def test_missing_mlx_names_the_extra(make_model, monkeypatch):
    import pyengine.mlx_backend as mb

    monkeypatch.setattr(mb, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pyengine\[mlx\]"):
        Engine(make_model("tiny", "q8_0"), backend="mlx")
    with pytest.raises(ValueError, match="dtype"):
        Engine(make_model("tiny", "q8_0"), backend="native", dtype="float32")
    # Importing pyengine never imports mlx.
    code = "import sys, pyengine; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent, check=True)
    assert out.stdout.strip() == "False"


def test_server_and_ab_harness_with_the_mlx_backend(make_model, tmp_path):
    import ollama

    path = make_model("tiny", "q8_0")
    env = {**os.environ, "PYENGINE_MLX_CACHE": str(tmp_path / "cache")}
    messages = [{"role": "user", "content": "Tell me about the quick brown fox."}]
    with Engine(path, n_ctx=512, backend="mlx") as eng:
        want = eng.chat(messages, max_tokens=8, temperature=0).text
    with ServerProcess({"tiny": path}, args=["--ctx", "512", "--backend", "mlx"],
                       env=env) as mlx_server, \
            ServerProcess({"tiny": path}, args=["--ctx", "512", "--threads", "1"]) as native:
        client = ollama.Client(host=mlx_server.url)
        got = client.chat(model="tiny", messages=messages,
                          options={"temperature": 0, "num_predict": 8})
        assert got.message.content == want
        with urllib.request.urlopen(mlx_server.url + "/api/pyengine/stats") as r:
            stats = json.loads(r.read())
        assert stats["tiny:latest"]["finished"] >= 1
        proc = subprocess.run(
            [sys.executable, "-m", "pyengine", "ab", "--a", f"{mlx_server.url},name=mlx",
             "--b", f"{native.url},name=native", "--concurrency", "1,2", "--requests", "2",
             "--max-tokens", "4", "--warmup", "0", "--out", "ab"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| 2 | mlx | 2/2 |" in proc.stdout and "| 2 | native | 2/2 |" in proc.stdout


def test_an_mlx_lm_quantized_folder_loads(make_model, tmp_path):
    """A folder as mlx-lm writes one (8-bit quantized, its own config), with the GGUF beside it
    for the tokenizer, serves like the file it came from, within the quantization's error."""
    import shutil

    from mlx_lm.models import gemma3_text
    from mlx_lm.utils import quantize_model, save_config, save_model

    from pyengine import _core
    from pyengine.mlx_backend import convert

    path = make_model("tiny", "f32")
    mf = _core.ModelFile(str(path))
    args = convert.model_args(mf.config)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(args))
    weights = convert.mlx_weights(mf, "float32")
    model.tie_word_embeddings = "lm_head.weight" not in weights
    if model.tie_word_embeddings:
        model.pop("lm_head")
    model.load_weights(list(weights.items()))
    model, config = quantize_model(model, dict(args), group_size=32, bits=8)
    folder = tmp_path / "tiny-8bit"
    save_model(folder, model)
    save_config(config, folder / "config.json")
    shutil.copy(path, folder / "tiny.gguf")

    ids = prompt_ids(3072, 60)
    with Engine(folder, n_ctx=512, backend="mlx") as eng, \
            Engine(path, n_ctx=512, backend="native") as native:
        assert eng.config["mlx_dtype"] == "mlx-lm"
        err = rel_err(eng.logits(ids).astype(np.float64), native.logits(ids).astype(np.float64))
        assert err.max() <= 5e-2  # 8-bit weights, like Q8_0's bound
        assert eng.generate(ids, max_tokens=4, temperature=0, ignore_eos=True).eval_count == 4
        assert eng.embed("hello").shape == (128,)


@pytest.mark.parametrize("preset,max_err,min_top1", [("tiny", 5e-2, 0.95),
                                                     ("tiny-3n", 1e-1, 0.85)])
def test_q8_0_runs_as_mlx_8bit_without_loss(make_model, preset, max_err, min_top1):
    """A Q8_0 file's matrices become MLX 8-bit matrices holding exactly the file's values."""
    import mlx.core as mx

    from pyengine import _core
    from pyengine.mlx_backend import convert

    path = make_model(preset, "q8_0")
    mf = _core.ModelFile(str(path))
    weights = convert.mlx_weights(mf, "quantized")
    prefix = "model.layers.0" if preset == "tiny" else "model.language_model.layers.0"
    for gguf_name, target in (("blk.0.ffn_down.weight", f"{prefix}.mlp.down_proj"),
                              ("token_embd.weight", prefix.rsplit(".layers", 1)[0]
                               + ".embed_tokens")):
        got = mx.dequantize(weights[target + ".weight"], weights[target + ".scales"],
                            weights[target + ".biases"], group_size=32, bits=8)
        np.testing.assert_array_equal(np.array(got.astype(mx.float32)), mf.tensor(gguf_name))
    with Engine(path, n_ctx=512, backend="mlx") as eng:
        assert eng.config["mlx_dtype"] == "quantized"  # the default for Q8_0 files
        err, top1 = oracle_agreement(eng.logits, path, eng.n_vocab, N_PROMPTS, N_PROMPT)
    assert err.max() <= max_err and top1 >= min_top1, (err.max(), top1)


def test_both_cores_meet_the_backend_contract(mlx_tiny, make_model):
    from pyengine.core_protocol import BackendCore, EngineStats

    required = set(EngineStats.__annotations__)
    with Engine(make_model("tiny", "q8_0"), n_ctx=512) as native:
        for core in (native._core, mlx_tiny._core):
            assert isinstance(core, BackendCore)
            stats = core.stats()
            assert required <= set(stats) and all(isinstance(stats[k], int) for k in required)


def test_an_engine_left_open_at_exit_never_aborts_the_process(make_model):
    # MLX's own state is torn down at exit; an engine nobody closed must not take the process
    # with it ("terminate called without an active exception" one run in a few, before the
    # worker learnt to finish its work at exit).
    # Loaded and left at once: the case that aborted 9 runs in 10 on a busy machine.
    code = ("import sys; from pyengine import Engine; "
            "e = Engine(sys.argv[1], backend='mlx', n_ctx=256); print(e.stats()['steps'])")
    for _ in range(4):
        proc = subprocess.run([sys.executable, "-c", code, str(make_model("tiny", "f16"))],
                              capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).parent)
        assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stderr[-2000:]
