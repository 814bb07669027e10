"""Speculative decoding, by prompt lookup and by a draft model: the same output as decoding
without drafts (greedy and seeded sampling; alone, batched, across preemption, prefix hits,
sliding windows, stop strings, limits and grammars), the target distribution kept (a chi-square
test), and the controls.

Without drafts each step computes one token per sequence; with them a step also scores the
draft tokens (those that followed the sequence's last few tokens earlier on, or a smaller
model's greedy continuation), and keeps those sampling agrees with. The step counts below show
the drafts at work without timing anything.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_all_pages_back, run_concurrently, run_together, stats_of
from test_batching import SMALL_CACHE_MB

from pyengine import Engine, ModelError
from pyengine.gateway.config import Config

PRESETS = [("tiny", "q8_0"), ("tiny", "f32"), ("tiny-3n", "q8_0"), ("tiny-4", "q8_0"),
           ("tiny-4-moe", "q8_0")]
JSON_DOC = ('{"name": "Alice Smith", "age": 34, "email": "alice.smith@example.com", "address": '
            '{"street": "12 Rose Lane", "city": "Springfield", "zip": "49007"}, "tags": '
            '["admin", "editor", "beta"]}')
COPY_PROMPT = f"Repeat the following JSON exactly.\n{JSON_DOC}\nHere it is again:\n"


def copy_prompts(n: int, seed: int = 0, segment: int = 40) -> list[list[int]]:
    """Prompts that repeat a random segment: where a random model's output copies (or loops on
    its own output), the lookup finds drafts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seg = rng.integers(300, 3000, segment).tolist()
        out.append([2] + seg + seg + seg[:8])
    return out


def greedy(path, ps, max_tokens=64, speculative="ngram", **kw) -> tuple[list[list[int]], dict]:
    with Engine(path, n_ctx=512, n_threads=2, speculative=speculative) as eng:
        out = [eng.generate(p, max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw).tokens
               for p in ps]
        return out, assert_all_pages_back(eng)


@pytest.mark.parametrize("preset,dtype", PRESETS)
def test_greedy_output_is_the_same_with_drafts(make_model, preset, dtype):
    path = make_model(preset, dtype)
    ps = copy_prompts(4)
    plain, st0 = greedy(path, ps, speculative="off")
    spec, st = greedy(path, ps)
    assert spec == plain
    assert st0["drafted"] == 0 and st0["steps"] >= 4 * 64
    assert st["draft_accepted"] > 0
    # Every kept draft token is a step not taken.
    assert st["steps"] == st0["steps"] - st["draft_accepted"]
    assert st["decode_tokens"] == st0["decode_tokens"]


def test_rejected_drafts_leave_nothing_behind(make_model):
    # The tiny Q8_0 model rejects some of its drafts: their positions are written, then written
    # over; a sliding window of 32 positions is crossed many times in 200 tokens.
    path = make_model("tiny", "q8_0")
    ps = copy_prompts(3, seed=1)
    plain, _ = greedy(path, ps, max_tokens=200, speculative="off")
    spec, st = greedy(path, ps, max_tokens=200)
    assert spec == plain
    assert 0 < st["draft_accepted"] < st["drafted"]


@pytest.mark.parametrize("preset", ["tiny", "tiny-3n", "tiny-4"])
def test_batched_and_preempted_sequences_draft_exactly(make_model, preset):
    path = make_model(preset, "q8_0")
    ps = copy_prompts(4, seed=2, segment=36)
    plain, _ = greedy(path, ps, max_tokens=96, speculative="off")
    # Four streams at once: drafts while a step decodes at most four.
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        assert run_concurrently(eng, ps, 96) == plain
        assert eng.stats()["draft_accepted"] > 0
        assert_all_pages_back(eng)
    # Six in a cache so small that sequences are set back and recomputed (as in
    # test_batching's preemption test); drafts once at most four decode and no prompt computes.
    ps = [copy_prompts(1, seed=20 + i, segment=n)[0] for i, n in enumerate([20, 28, 36, 16, 44, 12])]
    plain, _ = greedy(path, ps, max_tokens=96, speculative="off")
    with Engine(path, n_ctx=512, n_threads=2, kv_cache_mb=SMALL_CACHE_MB[preset],
                max_batch_tokens=64) as eng:
        assert run_together(eng, ps, 96) == plain
        st = assert_all_pages_back(eng)
        assert st["preemptions"] > 0 and st["draft_accepted"] > 0


def test_more_streams_than_the_draft_limit(make_model):
    # Six streams: steps decoding more than four sequences bring no drafts, the later ones do.
    path = make_model("tiny", "q8_0")
    ps = copy_prompts(6, seed=3)
    plain, _ = greedy(path, ps, speculative="off")
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        assert run_concurrently(eng, ps, 64) == plain
        assert_all_pages_back(eng)


def test_prefix_hits_and_limits(make_model):
    path = make_model("tiny", "q8_0")
    p = copy_prompts(1, seed=4)[0]
    with Engine(path, n_ctx=512, n_threads=2, speculative="off") as eng:
        ref = eng.generate(p, max_tokens=80, temperature=0, ignore_eos=True)
        short = eng.generate(p, max_tokens=5, temperature=0, ignore_eos=True)
        edge = eng.generate(p, max_tokens=80, temperature=0, ignore_eos=True,
                            num_ctx=len(p) + 20)
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        first = eng.generate(p, max_tokens=80, temperature=0, ignore_eos=True)
        again = eng.generate(p, max_tokens=80, temperature=0, ignore_eos=True)
        assert again.cached_tokens > 0  # the second run starts from the prefix cache
        assert first.tokens == again.tokens == ref.tokens
        # Drafts never pass max_tokens or the context.
        got = eng.generate(p, max_tokens=5, temperature=0, ignore_eos=True)
        assert got.tokens == short.tokens and got.done_reason == "length"
        got = eng.generate(p, max_tokens=80, temperature=0, ignore_eos=True, num_ctx=len(p) + 20)
        assert got.tokens == edge.tokens and got.done_reason == edge.done_reason == "length"
        assert eng.stats()["draft_accepted"] > 0
        assert_all_pages_back(eng)


def test_seeded_sampling_is_the_same_with_drafts(make_model):
    # Each row is sampled by the sequence's own sampler, in order, one draw per token: the
    # same seed gives the same tokens with and without drafts.
    path = make_model("tiny", "q8_0")
    ps = copy_prompts(3, seed=5)
    kw = dict(max_tokens=64, temperature=0.7, top_k=20, top_p=0.95, ignore_eos=True)
    outs = {}
    for spec in ("off", "ngram"):
        with Engine(path, n_ctx=512, n_threads=2, speculative=spec) as eng:
            outs[spec] = [eng.generate(p, seed=11 + i, **kw).tokens for i, p in enumerate(ps)]
            st = eng.stats()
    assert outs["ngram"] == outs["off"]
    assert st["draft_accepted"] > 0


# The 0.999 quantile of the chi-square distribution with 15 degrees of freedom.
CHI2_15_999 = 37.697
TEMPERATURE = 3.0  # flattens the top 4, so that every pair is drawn often


def test_sampled_tokens_follow_the_target_distribution(make_model):
    """Pairs of sampled tokens (t1, t2) among the top 4 at a high temperature, with drafts scored for
    t2, against the model's own distribution P(t1) P(t2 | t1) from its logits."""
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        base = copy_prompts(1, seed=6)[0]
        x = base[-1]
        # After x come each of the likeliest first tokens, then a token: the last two tokens
        # (x, t1) have occurred before, so the step that decodes t1 brings a draft for t2.
        # Each followed by the model's likeliest next token there, found in two rounds (the
        # prompt's own tokens move the logits), so that drafts are kept as well as refused.
        cands = np.argsort(-eng.logits(base)[-1])[:8].tolist()
        follow = {c: x for c in cands}
        for _ in range(2):
            prompt = base + [t for c in cands for t in (c, follow[c], x)]
            follow = {c: int(np.argmax(eng.logits(prompt + [c])[-1])) for c in cands}
        prompt = base + [t for c in cands for t in (c, follow[c], x)]

        def top4(ids):
            row = eng.logits(ids)[-1].astype(np.float64)
            best = np.argsort(-row, kind="stable")[:4]
            p = np.exp((row[best] - row[best[0]]) / TEMPERATURE)
            return dict(zip(best.tolist(), (p / p.sum()).tolist()))

        expected = {}
        for t1, p1 in top4(prompt).items():
            for t2, p2 in top4(prompt + [t1]).items():
                expected[(t1, t2)] = p1 * p2
        n = 1600
        before = eng.stats()
        counts: dict[tuple[int, int], int] = {}
        for seed in range(n):
            # Three tokens: the step that decodes t1 may draft one token (t2), keeping room
            # for the token it samples after an agreeing draft.
            toks = eng.generate(prompt, max_tokens=3, temperature=TEMPERATURE, top_k=4, top_p=1.0,
                                seed=seed, ignore_eos=True).tokens
            counts[tuple(toks[:2])] = counts.get(tuple(toks[:2]), 0) + 1
        st = eng.stats()
    drafted = st["drafted"] - before["drafted"]
    accepted = st["draft_accepted"] - before["draft_accepted"]
    chi2 = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in expected.items())
    print(f"drafted {drafted}, kept {accepted}, chi-square {chi2:.1f}, counts {counts}")
    assert 0 < accepted < drafted  # drafts were kept and refused
    assert set(counts) <= set(expected)
    assert len(expected) == 16
    assert chi2 < CHI2_15_999


def test_real_model_copies_in_fewer_steps(real_gguf):
    # Greedy on the real 270M: the copy of a JSON document is drafted and kept, far fewer steps
    # than tokens, and the text is the one decoding without drafts writes.
    outs, stats = {}, {}
    for spec in ("off", "ngram"):
        with Engine(real_gguf, n_ctx=1024, n_threads=2, speculative=spec) as eng:
            outs[spec] = eng.generate(COPY_PROMPT, max_tokens=96, temperature=0)
            stats[spec] = eng.stats()
    assert outs["ngram"].tokens == outs["off"].tokens
    assert outs["off"].text.startswith(JSON_DOC[:40])
    st = stats["ngram"]
    assert st["draft_accepted"] >= 0.7 * st["drafted"] > 0
    assert st["steps"] * 3 < stats["off"]["steps"]


def test_stop_strings_and_grammars_with_drafts(real_gguf):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"},
                                               "email": {"type": "string"}},
              "required": ["name", "age", "email"]}
    outs, stats = {}, {}
    for spec in ("off", "ngram"):
        with Engine(real_gguf, n_ctx=1024, n_threads=2, speculative=spec) as eng:
            # A stop string inside the copied span ends the output where it would without drafts.
            stopped = eng.generate(COPY_PROMPT, max_tokens=96, temperature=0, stop=["Springfield"])
            shaped = eng.generate(COPY_PROMPT, max_tokens=96, temperature=0, format=schema)
            outs[spec] = (stopped.tokens, stopped.text, shaped.tokens, shaped.text)
            stats[spec] = eng.stats()
    assert outs["ngram"] == outs["off"]
    assert outs["off"][1].endswith('"city": "')
    assert stats["ngram"]["draft_accepted"] > 0


def test_requests_and_engines_opt_out(make_model, monkeypatch):
    path = make_model("tiny", "q8_0")
    p = copy_prompts(1, seed=7)[0]
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        assert eng.num_draft == 8
        eng.generate(p, max_tokens=48, temperature=0, ignore_eos=True, speculative=False)
        assert eng.stats()["drafted"] == 0
        eng.generate(p, max_tokens=48, temperature=0, ignore_eos=True)
        assert eng.stats()["drafted"] > 0
    with Engine(path, n_ctx=512, n_threads=2, num_draft=2) as eng:
        eng.generate(p, max_tokens=48, temperature=0, ignore_eos=True)
        st = eng.stats()
        assert 0 < st["drafted"] <= 2 * st["draft_steps"]
    monkeypatch.setenv("PYENGINE_SPECULATIVE", "off")
    assert Config.from_env().speculative == "off"
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        assert eng.num_draft == 0
        eng.generate(p, max_tokens=48, temperature=0, ignore_eos=True)
        assert eng.stats()["drafted"] == 0
    monkeypatch.setenv("PYENGINE_SPECULATIVE", " NGram ")
    assert Config.from_env().speculative == "ngram"
    monkeypatch.setenv("PYENGINE_SPECULATIVE", "no-such-model:1b")
    with pytest.raises(Exception, match="no-such-model"):
        Engine(path)
    monkeypatch.delenv("PYENGINE_SPECULATIVE")
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="num_draft"):
            Engine(path, num_draft=bad)
    with Engine(path, n_ctx=512) as eng, pytest.raises(ValueError, match="speculative"):
        eng.generate(p, max_tokens=4, speculative="no")


# ------------------------------------------------------------------ drafts from a draft model
# The tiny Q8_0 model drafted by its own F32 weights: a draft model that mostly agrees, as a
# small model drafting for a larger one of the same family would; the tiny Gemma 3n model
# drafted by it: one whose drafts are all but always refused.


@pytest.mark.parametrize("target", ["tiny", "tiny-3n"])
def test_draft_model_greedy_output_is_the_same(make_model, target):
    path, draft = make_model(target, "q8_0"), make_model("tiny", "f32")
    rng = np.random.default_rng(8)
    ps = copy_prompts(2, seed=8) + [[2] + rng.integers(300, 3000, 50).tolist() for _ in range(3)]
    plain, st0 = greedy(path, ps, speculative="off")
    with Engine(path, n_ctx=512, n_threads=2, speculative=draft) as eng:
        assert eng.draft_model == draft
        assert [eng.generate(p, max_tokens=64, temperature=0, ignore_eos=True).tokens
                for p in ps] == plain
        st = assert_all_pages_back(eng)
        # Batched, and again with the second half from the prefix cache.
        assert run_concurrently(eng, ps[:4], 64) == plain[:4]
        assert_all_pages_back(eng)
    assert st["draft_failures"] == 0 and st["drafted"] > 0
    assert st["steps"] == st0["steps"] - st["draft_accepted"]
    # The draft model's keys and values come out of the same budget.
    assert st["kv_pages_total"] < st0["kv_pages_total"]
    if target == "tiny":  # the same layout: half each
        assert 0.45 <= st["kv_pages_total"] / st0["kv_pages_total"] <= 0.55
        assert st["draft_accepted"] >= 0.5 * st["drafted"]
    else:  # another model's weights: nearly every draft refused, and written over
        assert st["draft_accepted"] < 0.2 * st["drafted"]


def test_draft_model_under_preemption_and_sampling(make_model):
    path, draft = make_model("tiny", "q8_0"), make_model("tiny", "f32")
    ps = [copy_prompts(1, seed=30 + i, segment=n)[0] for i, n in enumerate([20, 28, 36, 16, 44, 12])]
    plain, _ = greedy(path, ps, max_tokens=160, speculative="off")
    with Engine(path, n_ctx=512, n_threads=2, kv_cache_mb=SMALL_CACHE_MB["tiny"],
                max_batch_tokens=64, speculative=draft) as eng:
        assert run_together(eng, ps, 160) == plain
        st = assert_all_pages_back(eng)
        assert st["preemptions"] > 0 and st["draft_accepted"] > 0
    kw = dict(max_tokens=48, temperature=0.8, top_k=20, top_p=0.95, ignore_eos=True)
    outs = {}
    for spec in ("off", draft):
        with Engine(path, n_ctx=512, n_threads=2, speculative=spec) as eng:
            outs[spec] = [eng.generate(p, seed=3 + i, **kw).tokens for i, p in enumerate(ps[:3])]
            st = eng.stats()
    assert outs[draft] == outs["off"] and st["draft_accepted"] > 0


def test_a_draft_model_of_another_vocabulary_is_refused(make_model):
    # Gemma 4's byte-pair vocabulary is not Gemma 3's: its ids would name other text.
    with pytest.raises(ModelError, match="vocabulary differs"):
        Engine(make_model("tiny", "q8_0"), speculative=make_model("tiny-4", "q8_0"))


def test_server_speculates_and_reports_it(pyengine_server, tiny):
    # `serve --speculative`: the same replies with and without drafts (a request's
    # "speculative": false in Ollama's options), and the draft counters in /metrics.
    import httpx

    server = pyengine_server({"tiny": tiny}, args=["--speculative", "ngram", "--num-draft", "6"])
    prompt = "w" * 3 + " the cat sat on the mat, the cat sat on the mat, the cat sat on the"
    replies = []
    for options in ({"temperature": 0, "num_predict": 40},
                    {"temperature": 0, "num_predict": 40, "speculative": False}):
        r = httpx.post(f"{server.url}/api/generate", timeout=60,
                       json={"model": "tiny", "prompt": prompt, "raw": True, "stream": False,
                             "options": options})
        assert r.status_code == 200, r.text
        replies.append(r.json()["response"])
    assert replies[0] == replies[1]
    stats = stats_of(server, "tiny:latest")
    assert stats["drafted"] > 0
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'pyengine_drafted_tokens_total{{model="tiny:latest"}} {stats["drafted"]}' in metrics
