"""Embeddings: the engine's mean-pooled hidden states against llama.cpp's mean pooling, batched
and chunked requests equal single ones, and the /api/embed, /api/embeddings and /v1/embeddings
routes through the official clients."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import oracle  # noqa: F401  (keeps the oracle's import rules in one place)
from pyengine import Engine, PyEngineError
from support import TEXTS, llama_embed

@pytest.mark.parametrize("dtype,bound", [("f32", 5e-3), ("f16", 5e-3), ("q8_0", 5e-2)])
def test_embeddings_match_llama_cpp_mean_pooling(make_model, dtype, bound):
    path = make_model("tiny", dtype)
    with Engine(path, n_ctx=512) as eng:
        for text in TEXTS:
            ours = eng.embed(text, normalize=False).astype(np.float64)
            ref = llama_embed(path, text)
            err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
            assert err <= bound, (dtype, text[:20], err)
            unit = eng.embed(text)
            assert abs(np.linalg.norm(unit) - 1) < 1e-5
            assert np.allclose(unit, ours / np.linalg.norm(ours), atol=1e-6)


def test_batched_and_chunked_embeddings_equal_single(make_model):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512) as eng:
        ref = [eng.embed(t) for t in TEXTS]
    # Small steps split each input into chunks next to the others' chunks; the first step waits
    # until all of them have arrived (max_batch of them).
    with Engine(path, n_ctx=512, max_batch=len(TEXTS), max_batch_tokens=24,
                batch_wait_ms=10_000) as eng:
        got: list[np.ndarray | None] = [None] * len(TEXTS)

        def work(i: int) -> None:
            got[i] = eng.embed(TEXTS[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(TEXTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = eng.stats()
        assert st["max_step_sequences"] > 1 and st["kv_pages_used"] == 0
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)  # Q8_0 rows do not depend on their batch


def test_embed_refuses_bad_input(make_model):
    with Engine(make_model("tiny", "q8_0"), n_ctx=64) as eng:
        with pytest.raises(PyEngineError, match="context"):
            eng.embed([2] + [100] * 100)
        with pytest.raises(PyEngineError):
            eng.embed([])


def test_embed_routes(make_model, pyengine_server):
    import ollama
    import openai

    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512) as eng:
        want = [eng.embed(t) for t in TEXTS[:2]]
    server = pyengine_server({"tiny": path}, args=["--ctx", "512", "--threads", "1"])
    client = ollama.Client(host=server.url)
    r = client.embed(model="tiny", input=TEXTS[:2])
    got = np.array(r.embeddings, dtype=np.float32)
    assert got.shape == (2, 128) and np.allclose(got, np.array(want), atol=1e-6)
    assert r.prompt_eval_count > 0 and r.total_duration > 0
    one = client.embed(model="tiny", input=TEXTS[0], dimensions=16)
    v = np.array(one.embeddings[0])
    assert v.shape == (16,) and abs(np.linalg.norm(v) - 1) < 1e-5
    legacy = client.embeddings(model="tiny", prompt=TEXTS[1])
    assert np.allclose(legacy.embedding, want[1], atol=1e-6)
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="tiny", input="x " * 2000, truncate=False)
    assert e.value.status_code == 400 and "context" in e.value.error
    long = client.embed(model="tiny", input="x " * 2000)  # truncated to the context by default
    assert len(long.embeddings[0]) == 128
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="nope", input="x")
    assert e.value.status_code == 404

    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    res = oa.embeddings.create(model="tiny", input=TEXTS[:2])
    assert [d.index for d in res.data] == [0, 1]
    assert np.allclose([d.embedding for d in res.data], np.array(want), atol=1e-6)
    assert res.usage.prompt_tokens == r.prompt_eval_count
