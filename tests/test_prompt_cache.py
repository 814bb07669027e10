"""The prompt cache on disk (``prompt_cache=DIR``, ``--prompt-cache``, ``pyengine warm``):
blocks of prefixes worth keeping survive a restart and give the same tokens; corrupt,
truncated and foreign files are refused; the disk budget holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import prompts

from pyengine import Engine

PROMPT = prompts(3, [300])[0]  # ten times the tiny preset's window: both KV groups matter
BT = 16  # positions per KV block


def engine(path, cache, **kw) -> Engine:
    return Engine(path, n_ctx=512, n_threads=2, prompt_cache=cache, **kw)


def generate(eng: Engine, ids, **kw):
    return eng.generate(ids, max_tokens=12, temperature=0.0, ignore_eos=True, **kw)


def cache_stats(eng: Engine) -> dict:
    return {k[len("prompt_cache_"):]: v for k, v in eng.stats().items()
            if k.startswith("prompt_cache_")}


def block_files(eng: Engine) -> list[Path]:
    return sorted(eng.prompt_cache.glob("*.kvb"))


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_a_prefix_served_three_times_survives_a_restart(make_model, tmp_path, kv_type):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512, kv_type=kv_type) as plain:
        want = generate(plain, PROMPT).tokens
    with engine(path, tmp_path, kv_type=kv_type) as eng:
        for _ in range(2):  # computed, then served from memory once: not yet worth the disk
            assert generate(eng, PROMPT).tokens == want
            assert cache_stats(eng)["writes"] == 0
        assert generate(eng, PROMPT).tokens == want  # served from memory twice: written
        st = cache_stats(eng)
        assert st["writes"] > 0 and st["files"] == len(block_files(eng)) == st["writes"]
    with engine(path, tmp_path, kv_type=kv_type) as eng:  # a new process's engine
        out = generate(eng, PROMPT)
        assert out.tokens == want
        assert out.cached_tokens == (len(PROMPT) - 1) // BT * BT
        assert out.prompt_eval_count == len(PROMPT) - out.cached_tokens
        st = cache_stats(eng)
        assert st["reads"] > 0 and st["rejected"] == 0


def test_keep_writes_a_prompt_at_once_and_only_its_prompt(make_model, tmp_path):
    path = make_model("tiny", "q8_0")
    with engine(path, tmp_path) as eng:
        generate(eng, prompts(4, [100])[0])  # not kept, served once: nothing written
        assert cache_stats(eng)["files"] == 0
        want = generate(eng, PROMPT, keep=True).tokens
        st = cache_stats(eng)
        # Both KV groups' blocks of the prompt's full blocks; none of the generated tokens'.
        assert st["files"] == 2 * (len(PROMPT) // BT)
    with engine(path, tmp_path) as eng:
        out = generate(eng, PROMPT)
        assert out.tokens == want and out.cached_tokens == (len(PROMPT) - 1) // BT * BT


@pytest.mark.parametrize("damage", ["tampered", "truncated", "foreign", "extended"])
def test_corrupt_truncated_and_foreign_files_are_refused(make_model, tmp_path, damage):
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512) as plain:
        want = generate(plain, PROMPT).tokens
    other = make_model("tiny", "q8_0", seed=1)  # the same shapes, other weights: another digest
    with engine(other, tmp_path / "other") as eng:
        generate(eng, PROMPT, keep=True)
        foreign = [f for f in block_files(eng) if f.name.startswith("0-")]
    with engine(path, tmp_path / "ours") as eng:
        generate(eng, PROMPT, keep=True)
        folder = eng.prompt_cache
    # Every block of the global group damaged alike: the first block a restarted engine
    # needs is one of them.
    ours = sorted(folder.glob("0-*.kvb"))
    assert len(ours) == len(foreign) == len(PROMPT) // BT
    for f, alien in zip(ours, foreign):
        data = bytearray(f.read_bytes())
        if damage == "tampered":
            data[len(data) // 2] ^= 0x40  # one bit of one key or value
        elif damage == "truncated":
            data = data[:-100]
        elif damage == "extended":
            data += b"\0" * 8
        else:  # another model's block under our block's name: same size, its own header
            data = bytearray(alien.read_bytes())
        f.write_bytes(bytes(data))
    (folder / "notes.txt").write_text("not a block")  # not ours: left alone
    with engine(path, tmp_path / "ours") as eng:
        out = generate(eng, PROMPT)
        st = cache_stats(eng)
    assert out.tokens == want  # recomputed, never read from a refused file
    assert out.cached_tokens == 0
    assert st["rejected"] >= 1 and st["reads"] == 0, st
    # A refused file is deleted; size checks refuse every one of them at start-up.
    left = sorted(folder.glob("0-*.kvb"))
    assert len(left) <= len(ours) - 1
    if damage in ("truncated", "extended"):
        assert st["rejected"] == len(ours) and not left
    assert (folder / "notes.txt").exists()


def test_the_disk_budget_holds(make_model, tmp_path):
    path = make_model("tiny", "q8_0")
    with engine(path, tmp_path / "measure") as eng:
        generate(eng, prompts(10, [200])[0], keep=True)
        one = cache_stats(eng)["bytes"]  # one prompt's blocks
    budget_mb = 2.5 * one / 2**20  # room for two prompts and a half
    with engine(path, tmp_path / "bounded", prompt_cache_mb=budget_mb) as eng:
        for seed in range(6):
            generate(eng, prompts(10 + seed, [200])[0], keep=True)
            st = cache_stats(eng)
            on_disk = sum(f.stat().st_size for f in block_files(eng))
            assert on_disk == st["bytes"] <= budget_mb * 2**20
        assert st["evictions"] > 0
    # The least recently used went first: the last two prompts are whole, the first is gone.
    with engine(path, tmp_path / "bounded", prompt_cache_mb=budget_mb) as eng:
        assert generate(eng, prompts(15, [200])[0]).cached_tokens == 192
        assert generate(eng, prompts(14, [200])[0]).cached_tokens == 192
        assert generate(eng, prompts(10, [200])[0]).cached_tokens == 0


def test_warm_command_fills_the_cache_for_chat_requests(make_model, tmp_path):
    path = make_model("tiny", "q8_0")
    system = "You are a strict judge. " + "Score answers for accuracy and clarity. " * 12
    chat = tmp_path / "judge.json"
    chat.write_text(json.dumps([{"role": "system", "content": system}]))
    raw = tmp_path / "raw.txt"
    raw.write_text("A raw completion prompt. " * 20)
    cache = tmp_path / "cache"
    # Run outside the source tree, where "-m pyengine" would find the uncompiled package.
    proc = subprocess.run([sys.executable, "-m", "pyengine", "warm", str(path), str(chat),
                           str(raw), "--prompt-cache", str(cache), "--ctx", "512"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Is 2+2=4?"}]
    with engine(path, cache) as eng:
        ids = eng.chat_prompt(messages)
        out = generate(eng, ids)
        # Every full block before the user's words came from the warm-up.
        shared = len(eng.chat_prompt(messages[:1]))
        assert out.cached_tokens >= (shared - 8) // BT * BT > 0
        assert cache_stats(eng)["reads"] > 0
        assert generate(eng, eng.tokenize(raw.read_text())).cached_tokens > 0
    bad = subprocess.run([sys.executable, "-m", "pyengine", "warm", str(path), str(raw)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYENGINE_PROMPT_CACHE"})
    assert bad.returncode == 1 and "--prompt-cache" in bad.stderr


def test_a_restarted_server_serves_a_2048_token_prefix_from_disk(real_gguf, tmp_path,
                                                                  pyengine_server):
    import openai

    text = (Path(__file__).parent / "data" / "perplexity_en.txt").read_text("utf-8")
    with Engine(real_gguf, n_ctx=512) as eng:
        # The shortest leading stretch of whole paragraphs that reaches 2,048 tokens.
        prefix = ""
        for paragraph in text.split("\n\n"):
            prefix += paragraph + "\n\n"
            if len(eng.tokenize(prefix)) >= 2048:
                break
        assert len(eng.tokenize(prefix)) >= 2048
    args = ["--ctx", "4096", "--threads", "2", "--prompt-cache", str(tmp_path)]

    def ask(server, question: str):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        r = client.completions.create(model="gemma3:270m", prompt=prefix + question,
                                      max_tokens=8, temperature=0)
        return r.choices[0].text, r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

    first = pyengine_server({"gemma3:270m": real_gguf}, args=args)
    _, n_prompt, cold_cached = ask(first, "In one word, the topic above is")
    assert cold_cached == 0
    ask(first, "The text above was written by")
    before = ask(first, "Summarise the text above:")  # the prefix's second hit: written
    first.stop()
    second = pyengine_server({"gemma3:270m": real_gguf}, args=args)
    after = ask(second, "Summarise the text above:")
    assert after[0] == before[0]  # the same tokens
    # Positions computed after the restart (the machine-independent part of the time to the
    # first token) at most a tenth of the cold request's.
    assert (after[1] - after[2]) * 10 <= n_prompt, after
