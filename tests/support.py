"""Helpers several test modules share: prompts, running them alone or concurrently, the KV
check every scheduler test ends with, llama.cpp's embeddings, and waiting on a server."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

import httpx
import numpy as np

from pyengine import Engine


def rel_err(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative L2 error of each row (position) of ours against ref."""
    return np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)


def prompts(seed: int, lengths: list[int], n_vocab: int = 3000) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randrange(10, n_vocab) for _ in range(n - 1)] for n in lengths]


def alone(path, ps, max_tokens, kv_type: str | None = None, **kw) -> list[list[int]]:
    """Each prompt on its own engine, one after another: the reference outputs."""
    out = []
    for p in ps:
        with Engine(path, n_ctx=512, kv_type=kv_type) as eng:
            out.append(eng.generate(p, max_tokens=max_tokens, temperature=0, ignore_eos=True,
                                    **kw).tokens)
    return out


def run_concurrently(eng: Engine, ps, max_tokens, **kw) -> list[list[int]]:
    results: list[list[int] | None] = [None] * len(ps)

    def work(i: int) -> None:
        results[i] = eng.generate(ps[i], max_tokens=max_tokens, temperature=0, ignore_eos=True,
                                  **kw).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results  # type: ignore[return-value]


def run_together(eng: Engine, ps, max_tokens, **kw) -> list[list[int]]:
    """Greedy tokens of every prompt, all submitted before any is read: they share the cache
    from the first steps on, however fast a step is (run_concurrently's threads may start so
    late that the first requests are done before the last arrive)."""
    streams = [eng.stream(p, max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw)
               for p in ps]
    return [[c.token for c in s if c.token >= 0] for s in streams]


def assert_all_pages_back(eng: Engine) -> dict:
    st = eng.stats()
    assert st["running"] == 0 and st["waiting"] == 0
    assert st["kv_pages_used"] == 0
    assert st["kv_pages_free"] + st["kv_pages_cached"] == st["kv_pages_total"]
    return st


TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3,
         "Embeddings are the mean of the final hidden states.",
         "日本語のテキストも埋め込みます。 " * 5]


def llama_embed(path, text: str) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), embedding=True,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_ctx=512, n_batch=512,
                          n_threads=2, verbose=False)
    return np.array(llm.embed(text, normalize=False), dtype=np.float64)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls predicate until it holds or timeout seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def stats_of(server, model: str) -> dict[str, int]:
    """A served model's engine counters (``/api/pyengine/stats``)."""
    return httpx.get(server.url + "/api/pyengine/stats", timeout=10).json()[model]
