"""Gemma 3n: logits and greedy generation agree with llama.cpp on the tiny synthetic files, and
the KV arena, embeddings and the server work for it as they do for Gemma 3 (batching,
preemption and the prefix cache run on both architectures in test_batching.py).

The tiny-3n preset has 25 layers, so layers 20-24 reuse the keys/values of layers 18 (sliding)
and 19 (global), and its window (32) is far shorter than the prompts.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import assert_greedy_matches_oracle, oracle_agreement, prompt_ids
from pyengine import Engine, ModelError
from support import TEXTS, assert_all_pages_back, llama_embed

# (dtype, max relative L2 error per position, min top-1 agreement): the bounds.
BOUNDS = [("f32", 5e-3, 0.99), ("f16", 1e-2, 0.99), ("q8_0", 1e-1, 0.85)]
N_PROMPT = 250
N_PROMPTS = 4  # ~1000 positions: top-1 agreement is a rate
KV_OWNERS = 20  # llama.cpp: layers 0-19 hold keys/values, later layers reuse them


def test_config_shares_kv_and_slides(make_model):
    cfg = Engine(make_model("tiny-3n", "f32"), n_ctx=512).config
    assert cfg["arch"] == "gemma3n"
    assert cfg["final_softcap"] == 30.0 and cfg["attn_scale"] == 1.0
    swa = cfg["layer_is_swa"]
    assert swa == [layer % 5 < 4 for layer in range(cfg["n_layer"])]  # the file's pattern array
    kv = cfg["kv_layer"]
    assert kv[:KV_OWNERS] == list(range(KV_OWNERS))
    # Each later layer reads the last owner of its own kind: 18 (sliding) or 19 (global).
    assert kv[KV_OWNERS:] == [18 if swa[i] else 19 for i in range(KV_OWNERS, cfg["n_layer"])]
    assert {18, 19} <= set(kv[KV_OWNERS:])
    assert cfg["sliding_window"] < N_PROMPT


@pytest.mark.parametrize("dtype,max_err,min_top1", BOUNDS)
def test_logits_match_llama_cpp(make_model, dtype, max_err, min_top1, isa):
    path = make_model("tiny-3n", dtype)
    eng = Engine(path, n_ctx=512)
    err, top1 = oracle_agreement(eng.logits, path, eng.n_vocab, N_PROMPTS, N_PROMPT)
    assert err.max() <= max_err, f"{dtype}/{isa}: worst position rel. error {err.max():.2e}"
    assert top1 >= min_top1, f"{dtype}/{isa}: top-1 agreement {top1:.3f}"


def test_greedy_generation_matches_llama_cpp(make_model, isa):
    # The long prompt's decode steps read shared KV past the window.
    assert_greedy_matches_oracle(make_model("tiny-3n", "f32"))


def test_embeddings_match_llama_cpp_mean_pooling(make_model):
    path = make_model("tiny-3n", "f32")
    with Engine(path, n_ctx=512) as eng:
        for text in TEXTS:
            ours = eng.embed(text, normalize=False).astype(np.float64)
            ref = llama_embed(path, text)
            assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 5e-3, text[:20]


def test_shared_layers_hold_no_pages(make_model):
    path = make_model("tiny-3n", "q8_0")
    with Engine(path, n_ctx=512) as eng:
        # 40 positions leave two full 16-position blocks in the prefix cache, both still inside
        # the window of the last position: one page per block for each of the 20 layers that own
        # keys/values, none for the 5 that reuse another layer's (25 layers would hold 50).
        eng.generate(prompt_ids(eng.n_vocab, 40), max_tokens=1, temperature=0)
        st = assert_all_pages_back(eng)
        assert st["kv_blocks_cached"] == 4  # 2 blocks x (global, sliding) groups
        assert st["kv_pages_cached"] == 2 * KV_OWNERS


def test_per_layer_table_stays_mapped(make_model):
    """The per-layer embedding table is neither copied nor swept: a few tokens touch few rows."""
    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("needs Linux /proc")
    path = make_model("tiny-3n", "f32")
    table_bytes = 3072 * 256 * 25 * 4  # n_vocab x (256 x n_layer) F32 values, 75 MiB

    def rss() -> tuple[int, int]:
        """(bytes of the model file mapped resident, anonymous resident bytes) of this process."""
        mapped, ours = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                    ours = line.rstrip().endswith(str(path))
                elif ours and parts[0] == "Rss:":
                    mapped += int(parts[1]) * 1024
        with open("/proc/self/status") as f:
            anon = next(int(x.split()[1]) * 1024 for x in f if x.startswith("RssAnon:"))
        return mapped, anon

    _, anon_before = rss()
    with Engine(path, n_ctx=512) as eng:
        eng.logits(prompt_ids(eng.n_vocab, 4))
        mapped, anon = rss()
    # The rest of the model (~28 MiB) is repacked into anonymous memory; a copy of the table
    # would add 75 MiB more. Reading 4 rows of 25 KiB maps at most a few page-cache folios (the
    # kernel may map a whole large folio of a freshly written file, up to 2 MiB per fault).
    assert anon - anon_before < table_bytes
    assert mapped < table_bytes // 4


@pytest.mark.parametrize("overrides,message", [
    ({"n_embd_altup": 128}, "per_layer_token_embd"),
    ({"laurel_rank": 32}, "laurel_l"),
    ({"n_altup": 2}, "altup_proj"),
])
def test_shapes_llama_cpp_fixes_are_checked(make_model, overrides, message):
    with pytest.raises(ModelError, match=message):
        Engine(make_model("tiny-3n", "f32", **overrides), n_ctx=512)


def test_server_serves_gemma3n_to_the_ollama_client(make_model, pyengine_server):
    import ollama

    path = make_model("tiny-3n", "q8_0")
    messages = [{"role": "user", "content": "Tell me about the quick brown fox."}]
    greedy = {"temperature": 0, "num_predict": 12, "seed": 1}
    with Engine(path, n_ctx=512) as eng:
        want = eng.chat(messages, max_tokens=12, temperature=0)
    assert want.text
    server = pyengine_server({"gemma3n:e2b": path}, args=["--ctx", "512", "--threads", "1"])
    client = ollama.Client(host=server.url)
    show = client.show("gemma3n:e2b")
    assert show.modelinfo["general.architecture"] == "gemma3n"
    parts = [c.message.content for c in client.chat(model="gemma3n:e2b", messages=messages,
                                                    options=greedy, stream=True)]
    assert "".join(parts) == want.text
    whole = client.chat(model="gemma3n:e2b", messages=messages, options=greedy)
    assert whole.message.content == "".join(parts)
