"""The scheduler: batched requests equal the same requests run alone, under staggered arrivals,
chunked prompts, cancellations, preemption and prefix sharing, and every KV page comes back."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

from pyengine import Engine, PyEngineError
from support import alone, assert_all_pages_back, prompts, rel_err, run_concurrently

WINDOW = 32  # the tiny presets' sliding window: prompts below are longer than it
# Every architecture; Gemma 3n's layers from 20 on and Gemma 4's last 5 share earlier layers'
# keys and values (Gemma 4's in pages sized for its wider full-layer heads), and the Gemma 4 MoE
# routes each token through 2 of 8 experts.
PRESETS = ["tiny", "tiny-3n", "tiny-4", "tiny-4-moe"]
# About two (Gemma 3; Gemma 4 with half-size pages: 2-5 preemptions per run measured) or
# one long (Gemma 3n: 20 pages a block) sequences' worth of KV memory.
SMALL_CACHE_MB = {"tiny": 1.0, "tiny-3n": 1.5, "tiny-4": 0.25, "tiny-4-moe": 0.25}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dtype", ["q8_0", "f32"])
def test_batched_greedy_equals_alone(make_model, preset, dtype):
    path = make_model(preset, dtype)
    ps = prompts(1, [3, 17, 40, 90, 150, 260])
    ref = alone(path, ps, 24)
    # Small steps force chunked prompts next to decoding sequences. The first step waits for
    # max_batch requests (the wait ends on the count, not on a clock: a tiny model can finish a
    # request before the next thread has submitted its own); the other two join as slots free.
    with Engine(path, n_ctx=512, max_batch=4, max_batch_tokens=48, batch_wait_ms=10_000) as eng:
        got = run_concurrently(eng, ps, 24)
        st = assert_all_pages_back(eng)
    assert got == ref
    assert st["max_step_sequences"] > 1  # the requests really shared steps
    assert st["max_step_sequences"] <= 4


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_a_position_computes_the_same_in_any_step(make_model, dtype):
    # Chunks of 1 (every token a one-token step, as decoding), 3, 5 and 64 tokens: the same
    # logits, bit for bit. Matrix products and attention take every token the same way
    # whatever shares its step, so batching, preemption (a sequence recomputed in other chunks)
    # and prefix reuse cannot change a greedy token.
    path = make_model("tiny", dtype)
    ps = prompts(5, [20, 70])
    with Engine(path, n_ctx=512) as eng:
        ref = [eng.logits(p) for p in ps]
    for chunk in (1, 3, 5, 64):
        with Engine(path, n_ctx=512, max_batch=1, max_batch_tokens=chunk) as eng:
            for r, p in zip(ref, ps):
                assert np.array_equal(eng.logits(p), r), (dtype, chunk)


def test_batched_logits_within_tolerance(make_model):
    # Bit-identical but for F16, whose steps of kI16MinTokens (16) tokens or more take integer
    # products of int16-rounded activations (twice the float rate) and smaller ones float
    # products: 2.1e-3 apart at most, measured on these prompts in chunks of 3 to 8.
    for dtype, bound in (("f32", 0.0), ("bf16", 0.0), ("f16", 5e-3), ("q8_0", 0.0)):
        path = make_model("tiny", dtype)
        ps = prompts(2, [20, 70, 130])
        with Engine(path, n_ctx=512) as eng:
            ref = [eng.logits(p) for p in ps]
        # The first step waits until all of them have arrived (max_batch of them).
        with Engine(path, n_ctx=512, max_batch=len(ps), max_batch_tokens=64,
                    batch_wait_ms=10_000) as eng:
            got: list[np.ndarray | None] = [None] * len(ps)

            def work(i: int, eng=eng, got=got, ps=ps) -> None:
                got[i] = eng.logits(ps[i])

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert eng.stats()["max_step_sequences"] > 1
        for r, g in zip(ref, got):
            err = rel_err(g, r)
            assert err.max() <= bound, (dtype, err.max())
            assert (g.argmax(1) == r.argmax(1)).mean() >= 0.99


def test_cancelled_streams_free_their_blocks(make_model):
    path = make_model("tiny", "q8_0")
    ps = prompts(3, [50, 60, 70, 80])
    ref = alone(path, ps, 40)
    with Engine(path, n_ctx=512) as eng:
        streams = [eng.stream(p, max_tokens=40, temperature=0, ignore_eos=True) for p in ps]
        got = [[] for _ in ps]
        for step in range(40):
            for i, s in enumerate(streams):
                if s is None:
                    continue
                got[i].append(next(s).token)
                if (i, step) in {(1, 5), (3, 0)}:
                    s.close()  # a client going away mid-stream
                    streams[i] = None
        for s in streams:
            if s is not None:
                assert next(s, None) is None
        st = assert_all_pages_back(eng)
        assert st["cancelled"] == 2
    assert got[0] == ref[0] and got[2] == ref[2]
    assert got[1] == ref[1][:6] and got[3] == ref[3][:1]


@pytest.mark.parametrize("preset", PRESETS)
def test_preemption_recomputes_without_corruption(make_model, preset):
    path = make_model(preset, "q8_0")
    ps = prompts(4, [60, 75, 90, 45, 110, 30])
    ref = alone(path, ps, 48)
    # Little memory: the newest sequences give way and are recomputed later. The first step
    # waits for all six requests, so they meet in the cache however the threads are scheduled.
    with Engine(path, n_ctx=512, kv_cache_mb=SMALL_CACHE_MB[preset], max_batch=6,
                max_batch_tokens=64, batch_wait_ms=10_000) as eng:
        budget = eng.stats()["kv_pages_total"]
        samples: list[dict] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                samples.append(eng.stats())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        got = run_concurrently(eng, ps, 48)
        stop.set()
        watcher.join()
        st = assert_all_pages_back(eng)
    assert got == ref
    assert st["preemptions"] > 0
    for s in samples:  # memory never exceeds the budget
        assert s["kv_pages_total"] == budget
        assert s["kv_pages_used"] + s["kv_pages_cached"] + s["kv_pages_free"] == budget
        assert 0 <= s["kv_pages_used"] <= budget


def test_random_mix_returns_every_page(make_model):
    path = make_model("tiny", "q8_0")
    rng = random.Random(5)
    with Engine(path, n_ctx=512, kv_cache_mb=1.5, max_batch=6, max_batch_tokens=40) as eng:
        def work(i: int) -> None:
            p = prompts(100 + i, [rng.randrange(2, 200)])[0]
            if i % 3 == 0:
                p = prompts(7, [64])[0] + p[1:]  # a shared prefix
            s = eng.stream(p, max_tokens=rng.randrange(1, 40), temperature=0.7, seed=i,
                           ignore_eos=True)
            for k, _ in enumerate(s):
                if i % 4 == 1 and k == 3:
                    s.close()
                    break

        threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for t in threads:
            time.sleep(rng.random() * 0.01)
            t.start()
        for t in threads:
            t.join()
        st = assert_all_pages_back(eng)
    assert st["finished"] + st["cancelled"] >= 24 and st["failed"] == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_prefix_cache_reuses_blocks_beyond_the_window(make_model, preset):
    path = make_model(preset, "q8_0")
    shared = prompts(6, [200])[0]  # far longer than the 32-position window
    a = shared + prompts(8, [10])[0][1:]
    b = shared + prompts(9, [7])[0][1:]
    ref_b = alone(path, [b], 20)[0]
    with Engine(path, n_ctx=512) as eng:
        eng.generate(a, max_tokens=20, temperature=0, ignore_eos=True)
        out = eng.generate(b, max_tokens=20, temperature=0, ignore_eos=True)
        st = assert_all_pages_back(eng)
        assert out.tokens == ref_b
        assert out.cached_tokens == len(shared) // 16 * 16
        assert out.prompt_eval_count == len(b) - out.cached_tokens
        assert st["prefix_hit_tokens"] == out.cached_tokens
        # The same prompt again shares all but the block holding its last token.
        again = eng.generate(b, max_tokens=20, temperature=0, ignore_eos=True)
        assert again.tokens == ref_b and again.cached_tokens == (len(b) - 1) // 16 * 16
        # Teacher-forced scoring never reuses (it wants every position's logits).
        np.testing.assert_array_equal(eng.logits(b[:40]), Engine(path).logits(b[:40]))


def test_multi_turn_reuses_generated_blocks(make_model):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512) as eng:
        turn1 = prompts(10, [40])[0]
        out = eng.generate(turn1, max_tokens=40, temperature=0, ignore_eos=True)
        turn2 = turn1 + out.tokens + prompts(11, [12])[0][1:]
        out2 = eng.generate(turn2, max_tokens=8, temperature=0, ignore_eos=True)
        # Output blocks were cached too: only the tail after the last full block is computed.
        assert out2.cached_tokens == (len(turn1) + len(out.tokens) - 1) // 16 * 16
    assert out2.tokens == alone(path, [turn2], 8)[0]


def test_lru_eviction_keeps_memory_in_budget(make_model):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512, kv_cache_mb=0.75) as eng:
        total = eng.stats()["kv_pages_total"]
        for i in range(12):
            eng.generate(prompts(20 + i, [150])[0], max_tokens=4, temperature=0, ignore_eos=True)
            st = eng.stats()
            assert st["kv_pages_cached"] + st["kv_pages_free"] == total
        assert st["kv_evictions"] > 0
        # The most recent prompt is still cached; the first was evicted.
        last = eng.generate(prompts(31, [150])[0], max_tokens=1, temperature=0)
        first = eng.generate(prompts(20, [150])[0], max_tokens=1, temperature=0)
        assert last.cached_tokens > 0 and first.cached_tokens == 0


def test_async_streams_batch_and_cancel(make_model):
    path = make_model("tiny", "q8_0")
    ps = prompts(12, [30, 55, 80])
    ref = alone(path, ps, 16)

    async def main(eng: Engine) -> list[list[int]]:
        async def one(p):
            return (await eng.agenerate(p, max_tokens=16, temperature=0, ignore_eos=True)).tokens

        async def abandoned():
            async for _ in eng.astream(ps[0], max_tokens=1000, temperature=0, ignore_eos=True):
                await asyncio.sleep(0)

        task = asyncio.create_task(abandoned())
        results = await asyncio.gather(*(one(p) for p in ps))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return results

    # Four requests (three and the abandoned stream): the first step waits for all four.
    with Engine(path, n_ctx=2048, max_batch=4, batch_wait_ms=10_000) as eng:
        got = asyncio.run(main(eng))
        for _ in range(100):  # the cancellation lands at the next step boundary
            if eng.stats()["running"] == 0:
                break
            time.sleep(0.01)
        assert_all_pages_back(eng)
        assert eng.stats()["max_step_sequences"] >= 3
    assert got == ref


def test_request_context_is_independent(make_model):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=64) as eng:
        long_prompt = prompts(13, [100])[0]
        with pytest.raises(PyEngineError, match="context"):
            eng.generate(long_prompt, max_tokens=1)
        out = eng.generate(long_prompt, max_tokens=5, temperature=0, ignore_eos=True, num_ctx=256)
        assert out.eval_count == 5
        short = eng.generate(prompts(14, [20])[0], max_tokens=50, temperature=0, ignore_eos=True,
                             num_ctx=30)
        assert short.done_reason == "length" and 20 + short.eval_count - 1 == 30


def test_oversize_and_closed(make_model):
    path = make_model("tiny", "q8_0")
    eng = Engine(path, n_ctx=1024, kv_cache_mb=0.25)
    with pytest.raises(PyEngineError, match="KV cache"):
        eng.generate(prompts(15, [900])[0], max_tokens=1)
    stream = eng.stream(prompts(16, [20])[0], max_tokens=10_000, temperature=0, ignore_eos=True)
    next(stream)
    eng.close()
    with pytest.raises(PyEngineError, match="closed"):
        list(stream)
    with pytest.raises(PyEngineError, match="closed"):
        eng.generate("after close", max_tokens=1)
    with pytest.raises(ValueError, match="kv_cache_mb"):
        Engine(path, kv_cache_mb=-1)


def test_max_cache_size_env(make_model, monkeypatch):
    path = make_model("tiny", "q8_0")
    monkeypatch.setenv("MAX_CACHE_SIZE_MB", "3")
    with Engine(path) as eng:
        st = eng.stats()
        assert st["kv_pages_total"] * st["kv_page_bytes"] <= 3 * 2**20
        assert st["kv_pages_total"] * st["kv_page_bytes"] > 3 * 2**20 - st["kv_page_bytes"]
    monkeypatch.setenv("MAX_CACHE_SIZE_MB", "lots")
    with pytest.raises(ValueError, match="MAX_CACHE_SIZE_MB"):
        Engine(path)


def test_environment_switches_batching_and_prompt_cache(make_model, monkeypatch):
    path = make_model("tiny", "q8_0")
    ps = prompts(17, [40, 50, 60])
    monkeypatch.setenv("ENABLE_BATCHED_INFERENCE", "false")
    monkeypatch.setenv("ENABLE_PROMPT_CACHE", "false")
    with Engine(path, n_ctx=512, batch_wait_ms=20) as eng:
        got = run_concurrently(eng, ps, 12)
        again = eng.generate(ps[0], max_tokens=12, temperature=0, ignore_eos=True)
        st = assert_all_pages_back(eng)
    assert st["max_step_sequences"] == 1  # one sequence per step
    assert again.cached_tokens == 0 and st["kv_pages_cached"] == 0 and st["prefix_hit_tokens"] == 0
    assert got == alone(path, ps, 12) and again.tokens == got[0]
    monkeypatch.setenv("ENABLE_KV_CACHE", "false")
    monkeypatch.delenv("ENABLE_PROMPT_CACHE")
    monkeypatch.delenv("ENABLE_BATCHED_INFERENCE")
    with Engine(path, n_ctx=512) as eng:
        eng.generate(ps[0], max_tokens=2, temperature=0)
        assert eng.generate(ps[0], max_tokens=2, temperature=0).cached_tokens == 0


def test_timeout_cancels_the_request(long_model):
    # A 32768-token context: the reply could run for tens of seconds (its attention alone grows
    # with the square of the length), so it is the timeout that ends it however fast the CPU.
    with Engine(long_model, n_ctx=32768) as eng:
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError, match="time-out"):
            eng.generate(prompts(18, [20])[0], max_tokens=100_000, ignore_eos=True, timeout=0.2)
        assert 0.2 <= time.perf_counter() - t0 < 5
        for _ in range(100):
            if eng.stats()["running"] == 0:
                break
            time.sleep(0.01)
        assert_all_pages_back(eng)
        with pytest.raises(ValueError, match="timeout"):
            eng.generate("x", timeout=-1)


def test_an_unstarted_stream_dropped_is_cancelled(make_model):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=1024, max_batch=1) as eng:
        for i in range(5):
            eng.stream(prompts(30 + i, [10])[0], max_tokens=-1, ignore_eos=True)  # dropped
        s = eng.stream(prompts(40, [10])[0], max_tokens=-1, ignore_eos=True)
        s.close()
        for _ in range(200):
            if eng.stats()["running"] + eng.stats()["waiting"] == 0:
                break
            time.sleep(0.01)
        st = assert_all_pages_back(eng)
    assert st["cancelled"] == 6


@pytest.mark.parametrize("preset", ["tiny", "tiny-4"])
def test_requests_arriving_together_compute_their_shared_prefix_once(make_model, preset):
    # Four requests with one 320-token prefix (a system prompt, a judge's rubric) arrive in the
    # same step: the first computes it, the others wait for its blocks and attach them from the
    # prefix cache, and every one gets the tokens it gets alone.
    path = make_model(preset, "q8_0")
    base = prompts(3, [320])[0]
    ps = [base + prompts(10 + i, [9])[0] for i in range(4)]
    ref = alone(path, ps, 8)
    with Engine(path, n_ctx=1024, max_batch=4, batch_wait_ms=10_000) as eng:
        out: list = [None] * len(ps)

        def work(i: int) -> None:
            out[i] = eng.generate(ps[i], max_tokens=8, temperature=0, ignore_eos=True)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = assert_all_pages_back(eng)
    assert [o.tokens for o in out] == ref
    assert sorted(o.cached_tokens for o in out) == [0, 320, 320, 320]
    assert st["prompt_tokens"] == 320 + 4 * 9  # the prefix once, each suffix once
