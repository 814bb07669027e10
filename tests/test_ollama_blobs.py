"""Ollama's published blobs, read as they are, compute what the llama.cpp-style files compute.

Each blob here is written by scripts/ollama_style.py from a llama.cpp-style file (synthetic
Gemma 3 and Gemma 3n, F32 and Q8_0, and the real Gemma 3 270M) with one quirk of Ollama's
converter at a time, or all of them: the rewrite must leave the config, the tokenization, the
rendered text, the logits (bit for bit) and greedy tokens unchanged. Also: the 131072-context
"4B-like" blob without scaling keys gets the linear x8 RoPE the explicit keys give; the vision
tower in the file is never read (page tables of the engine's own mapping); a key that cannot be
inferred fails naming itself.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from support import rel_err
from conftest import prompt_ids
from ollama_style import GEMMA3_QUIRKS, GEMMA3N_QUIRKS, TINY_VISION, VisionSpec, _Blob, rewrite

from pyengine import Engine, GGUFError, _core

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Once upon a time",
    "  Leading spaces,\ttabs\n\nand blank lines   inside. Où est la gare? 😀 的一是",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n<b>bold</b>",
    "<image_soft_token> is plain text here, as are <unused3> and <0x41>",
]
N_PROMPT = 120  # several times the tiny models' sliding window (32): global layers matter
THREADS = 2
# Quirks that leave a file meaning exactly what it meant (softcap-30 has its own test).
SAME_G3 = [q for q in GEMMA3_QUIRKS if q != "softcap-30"] + ["all"]
SAME_G3N = list(GEMMA3N_QUIRKS) + ["all"]
G3N_TEXT, G3N_MM = 3072, 64  # tiny-3n's text vocabulary, and the multimodal ids past it
# Rope bases other than the defaults a reader falls back to, so that reading a renamed key is
# checked (no-rope-keys drops them and needs the defaults).
BASES = {"rope_freq_base": 5e5, "rope_freq_base_swa": 2e4}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Yields path(original, *quirks, **rewrite options) of an Ollama-style rewrite."""
    out = tmp_path_factory.mktemp("ollama")
    cache: dict[tuple, Path] = {}

    def get(src: Path, *quirks: str, **kw) -> Path:
        key = (src, quirks, tuple(sorted(kw.items())))
        if key not in cache:
            dst = out / f"{src.stem}-{'-'.join(quirks) or 'none'}-{len(cache)}.gguf"
            kw.setdefault("vision", TINY_VISION)
            rewrite(src, dst, quirks, **kw)
            cache[key] = dst
        return cache[key]

    yield get
    shutil.rmtree(out, ignore_errors=True)  # about 2 GB of rewrites: gone with the module


@pytest.fixture(scope="module")
def gemma3n(make_model):
    """Gemma 3n originals as llama.cpp writes them: multimodal ids past the text vocabulary,
    whose per-layer rows are zero."""
    return lambda dtype: make_model("tiny-3n", dtype, n_vocab=G3N_TEXT + G3N_MM,
                                    n_vocab_per_layer=G3N_TEXT, **BASES)


def engine(path: Path) -> Engine:
    return Engine(path, n_ctx=512, n_threads=THREADS, kv_cache_mb=64)


def assert_same_model(original: Path, blob: Path, n_mm: int = 0) -> None:
    """The blob computes, tokenizes and renders exactly as the original."""
    with engine(original) as a, engine(blob) as b:
        assert b.config == a.config and b.n_vocab == a.n_vocab
        assert set(b._core.eog_ids) == set(a._core.eog_ids)
        for text in TEXTS:
            for special in (False, True):
                ids = a.tokenize(text, special=special)
                assert b.tokenize(text, special=special) == ids, (text, special)
                assert b.detokenize(ids) == a.detokenize(ids)
        # Every id once (multimodal ones included) renders the same, specials shown or not.
        every = list(range(a.n_vocab))
        for special in (False, True):
            assert b._core.detokenize(every, special) == a._core.detokenize(every, special)
        ids = prompt_ids(a.n_vocab - n_mm, N_PROMPT, seed=3)
        if n_mm:  # the ids past the per-layer table, inside a prompt
            ids[10:10 + 8] = list(range(a.n_vocab - n_mm, a.n_vocab - n_mm + 8))
        la, lb = a.logits(ids), b.logits(ids)
        assert np.isfinite(la).all() and np.array_equal(la, lb)
        prompt = a.tokenize(TEXTS[0])
        ga = a.generate(prompt, max_tokens=12, temperature=0.0, ignore_eos=True)
        gb = b.generate(prompt, max_tokens=12, temperature=0.0, ignore_eos=True)
        assert gb.tokens == ga.tokens and gb.text == ga.text


# ------------------------------------------------------------------------- each quirk alone

@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
@pytest.mark.parametrize("quirk", SAME_G3)
def test_gemma3_quirk_keeps_logits_tokens_and_text(make_model, blobs, quirk, dtype):
    original = make_model("tiny", dtype, **({} if quirk == "no-rope-keys" else BASES))
    assert_same_model(original, blobs(original, quirk))


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
@pytest.mark.parametrize("quirk", SAME_G3N)
def test_gemma3n_quirk_keeps_logits_tokens_and_text(gemma3n, blobs, quirk, dtype):
    original = gemma3n(dtype)
    assert_same_model(original, blobs(original, quirk), n_mm=G3N_MM)


def test_the_rewrites_show_their_quirks(make_model, gemma3n, blobs):
    """The blobs above really differ from their originals the way Ollama's do."""
    g3 = _Blob(blobs(make_model("tiny", "f32"), "all"))
    assert "gemma3.attention.layer_norm_rms_epsilon" not in g3.kv
    assert "gemma3.rope.freq_base" not in g3.kv and "gemma3.rope.global.freq_base" in g3.kv
    assert "tokenizer.ggml.add_space_prefix" not in g3.kv
    assert len(g3.get("tokenizer.ggml.tokens")) == g3.tensor("token_embd.weight").data.shape[0] + 1
    assert g3.get("tokenizer.ggml.tokens")[-1] == "<image_soft_token>"
    assert any(t.name.startswith("v.blk.") for t in g3.tensors)
    assert g3.get("gemma3.mm.tokens_per_image") == TINY_VISION.tokens_per_image
    g3n = _Blob(blobs(gemma3n("f32"), "all"))
    assert g3n.tensor("per_layer_token_embd.weight").data.shape[0] == G3N_TEXT
    assert g3n.tensor("token_embd.weight").data.shape[0] == G3N_TEXT + G3N_MM
    assert g3n.get("tokenizer.ggml.model") != "llama"
    assert "gemma3n.attention.key_length" not in g3n.kv and "gemma3n.head_dim" in g3n.kv
    assert "gemma3n.rope.freq_base_local" in g3n.kv
    g4b = _Blob(blobs(make_model("tiny", "f32", context_length=131072, rope_scaling_factor=8.0),
                      "all", like_4b=True))
    assert g4b.get("gemma3.context_length") == 131072
    assert not [k for k in g4b.kv if k.startswith("gemma3.rope.")]


def test_gemma3n_multimodal_ids_have_a_zero_per_layer_input(gemma3n, blobs, tmp_path):
    """Past the per-layer table an id gets a zero per-layer input, as in llama.cpp's zero-padded
    file (equal logits above, with such ids in the prompt). Hugging Face looks up row 0 (the
    pad token's) for them instead: a file padded with row 0 computes differently, so the
    equality is not vacuous."""
    original = gemma3n("f32")
    row0 = _Blob(original)
    t = row0.tensor("per_layer_token_embd.weight")
    t.data = np.array(t.data)
    t.data[G3N_TEXT:] = t.data[0]
    row0_path = tmp_path / "row0-padded.gguf"
    row0.write(row0_path)
    ids = [2, 400, G3N_TEXT + 5, 500, 600]
    with engine(blobs(original, "per-layer-rows")) as b, engine(row0_path) as h:
        assert b.config["n_vocab"] == G3N_TEXT + G3N_MM
        lb, lh = b.logits(ids), h.logits(ids)
    assert np.array_equal(lb[:2], lh[:2]) and not np.allclose(lb[2:], lh[2:])


def test_gemma3n_end_of_turn_is_in_the_stop_set(gemma3n, blobs, tmp_path):
    original = gemma3n("q8_0")
    with engine(blobs(original, "all")) as b:
        assert 106 in b._core.eog_ids and b._core.detokenize([106], True) == "<end_of_turn>"
    # Also when the blob types <end_of_turn> as a plain piece: llama.cpp stops on its text.
    blob = _Blob(blobs(original, "all"))
    types = list(blob.get("tokenizer.ggml.token_type"))
    types[106] = int(gguf.TokenType.NORMAL)
    blob.set("tokenizer.ggml.token_type", types, gguf.GGUFValueType.ARRAY,
             gguf.GGUFValueType.INT32)
    blob.pop("tokenizer.ggml.eos_token_ids")
    path = tmp_path / "eot-normal.gguf"
    blob.write(path)
    with engine(path) as b:
        assert 106 in b._core.eog_ids
    # Every id of Ollama's eos list ends generation (here also <mask>, 4, to see it is read).
    blob.set("tokenizer.ggml.eos_token_ids", [1, 106, 4], gguf.GGUFValueType.ARRAY,
             gguf.GGUFValueType.INT32)
    path = tmp_path / "eos-list.gguf"
    blob.write(path)
    with engine(path) as b:
        assert {1, 106, 4} <= set(b._core.eog_ids)


# ------------------------------------------------------------- the 131072-context 4B-like blob

def test_4b_like_blob_without_scaling_keys_computes_linear_x8(make_model, blobs):
    scaled = make_model("tiny", "f32", context_length=131072, rope_scaling_factor=8.0)
    unscaled = make_model("tiny", "f32", context_length=131072)
    blob = blobs(scaled, "all", like_4b=True)
    assert not {"gemma3.rope.scaling.type", "gemma3.rope.scaling.factor"} & set(_Blob(blob).kv)
    assert_same_model(scaled, blob)
    with engine(blob) as b, engine(unscaled) as u:
        assert b.config["rope_scale"] == pytest.approx(1 / 8) and u.config["rope_scale"] == 1.0
        ids = prompt_ids(b.n_vocab, N_PROMPT, seed=5)
        lb, lu = b.logits(ids), u.logits(ids)
    # Scaling matters for these prompts: the unscaled model is far from the scaled one.
    err = rel_err(lb, lu)
    assert err[N_PROMPT // 2:].min() > 1e-2


def test_131072_context_without_ollama_markers_stays_unscaled(make_model):
    """A llama.cpp-style file states its scaling; none stated is none, as llama.cpp reads it."""
    with engine(make_model("tiny", "f32", context_length=131072)) as e:
        assert e.config["rope_scale"] == 1.0


def test_softcap_30_is_dropped_only_next_to_the_converter_marker_that_wrote_it(make_model, blobs):
    original = make_model("tiny", "f32")
    with engine(blobs(original, "softcap-30", "nested-rope")) as b:
        assert b.config["final_softcap"] == 0.0
    # Without rope.global.freq_base the 30 is the file's own statement and is applied.
    with engine(blobs(original, "softcap-30")) as b:
        assert b.config["final_softcap"] == 30.0


# --------------------------------------------------------------------- the vision tower

def _present_pages(path: Path, start: int, end: int) -> tuple[int, int]:
    """(pages present, pages) of file bytes [start, end) in this process's private mappings of
    path (the engine maps the file privately, read-only), read from /proc/self/pagemap."""
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = -(-start // page), end // page  # whole pages inside the range
    present = total = 0
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].strip() != str(path) or fields[1][3] != "p":
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            a0 = max(lo, lo + first * page - offset)
            a1 = min(hi, lo + last * page - offset)
            if a1 <= a0:
                continue
            pagemap.seek(a0 // page * 8)
            entries = np.frombuffer(pagemap.read((a1 - a0) // page * 8), dtype=np.uint64)
            present += int((entries >> np.uint64(63)).sum())
            total += len(entries)
    return present, total


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    span = int(t.data_offset), int(t.data_offset) + int(t.n_bytes)
    del r, t
    gc.collect()
    return span


def test_vision_tensors_are_never_read(make_model, tmp_path):
    """The engine's mapping of the blob has no page of the vision tensors in its page tables
    after loading and computing, while the embedding rows it read are there. (Their values are
    NaN too: the equal, finite logits of the tests above rule out computing with them.)"""
    blob = (tmp_path / "vision.gguf").resolve()
    span = rewrite(make_model("tiny", "f32"), blob, ["vision"], vision=TINY_VISION)["vision_range"]
    emb = _tensor_span(blob, "token_embd.weight")
    row_bytes = (emb[1] - emb[0]) // 3072
    # Fault-around and huge pages may map a neighbour's pages; 2 MiB either side is beyond both.
    margin = 2 << 20
    assert span[1] - span[0] > 3 * margin
    page = os.sysconf("SC_PAGE_SIZE")
    with engine(blob) as e:
        token = 2000
        e.logits([2, token, token, 300])
        row_page = (emb[0] + token * row_bytes) // page * page
        assert _present_pages(blob, row_page, row_page + page) == (1, 1), \
            "the probe cannot see a page the engine did read"
        present, total = _present_pages(blob, span[0] + margin, span[1] - margin)
        assert total > 0 and present == 0, f"{present} of {total} vision pages were read"


def test_show_reports_the_blob_honestly(make_model, gemma3n, blobs):
    def show(path: Path) -> dict[str, str]:
        proc = subprocess.run([sys.executable, "-m", "pyengine", "show", str(path)],
                              check=False, capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).parent)
        assert proc.returncode == 0, proc.stderr
        rows = {}
        for line in proc.stdout.splitlines():
            label, _, value = line.strip().partition("  ")
            rows[label] = value.strip()
        return rows

    g3 = show(blobs(make_model("tiny", "f32"), "all"))
    assert "Ollama" in g3["written by"]
    assert g3["vision tower"].startswith("135 tensors") and "never read" in g3["vision tower"]
    assert g3["vocabulary"].startswith("3072 (3073 listed")
    assert "no key" in g3["rms epsilon"] and "rope.global.freq_base" in g3["rope base (global)"]
    assert g3["final softcap"].startswith("none")
    assert g3["add_space_prefix"].startswith("False (no key")
    scaled = show(blobs(make_model("tiny", "f32", context_length=131072,
                                   rope_scaling_factor=8.0), "all", like_4b=True))
    assert scaled["rope scaling"].startswith("linear x8 (no key")
    g3n = show(blobs(gemma3n("f32"), "all"))
    assert g3n["per-layer table"].startswith(f"{G3N_TEXT} of {G3N_TEXT + G3N_MM}")
    assert "SentencePiece" in g3n["model"] and "gemma3n.head_dim" in g3n["head dimension"]


# ------------------------------------------------------------------------ what cannot be read

def test_missing_key_that_cannot_be_inferred_fails_naming_it(make_model, blobs):
    # 34 layers (the 4B's count) at a context under 131072: Ollama's two rules disagree on x8.
    blob = blobs(make_model("tiny", "f32", n_layer=34), "no-rms-eps")
    with pytest.raises(GGUFError, match=r"gemma3\.rope\.scaling\.factor' is missing") as e:
        engine(blob)
    assert str(blob) in str(e.value)


def test_unreadable_tokenizers_fail_naming_the_key(gemma3n, make_model, blobs, tmp_path):
    blob = _Blob(blobs(gemma3n("q8_0"), "tokenizer-model"))
    blob.pop("tokenizer.ggml.scores")
    no_scores = tmp_path / "no-scores.gguf"
    blob.write(no_scores)
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.scores is missing") as e:
        engine(no_scores)
    assert str(no_scores) in str(e.value)
    # A text piece listed past token_embd's rows is a broken file, not Ollama's extra tokens.
    blob = _Blob(blobs(make_model("tiny", "q8_0"), "extra-tokens"))
    types = list(blob.get("tokenizer.ggml.token_type"))
    types[-1] = int(gguf.TokenType.NORMAL)
    blob.set("tokenizer.ggml.token_type", types, gguf.GGUFValueType.ARRAY,
             gguf.GGUFValueType.INT32)
    text_past = tmp_path / "text-past-rows.gguf"
    blob.write(text_past)
    with pytest.raises(GGUFError, match="past them is a text piece"):
        engine(text_past)


def test_rewrites_refuse_to_change_meaning(make_model, tmp_path):
    original = make_model("tiny", "f32", rms_eps=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        rewrite(original, tmp_path / "x.gguf", ["no-rms-eps"])
    with pytest.raises(ValueError, match="no zero rows"):
        rewrite(make_model("tiny-3n", "f32"), tmp_path / "y.gguf", ["per-layer-rows"])
    with pytest.raises(ValueError, match="linearly by 8"):
        rewrite(make_model("tiny", "f32"), tmp_path / "z.gguf", ["all"], like_4b=True)


# --------------------------------------------------------------------- the MLX backend

@pytest.mark.parametrize("preset,dtype", [("tiny", "float32"), ("tiny-3n", "float32"),
                                          ("tiny-3n", "q8")])
def test_mlx_backend_reads_the_blobs(make_model, gemma3n, blobs, preset, dtype, tmp_path,
                                     monkeypatch):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    monkeypatch.setenv("PYENGINE_MLX_CACHE", str(tmp_path / "mlx-cache"))
    file_dtype = "q8_0" if dtype == "q8" else "f32"
    original = make_model("tiny", file_dtype) if preset == "tiny" else gemma3n(file_dtype)
    blob = blobs(original, "all")
    ids = prompt_ids(3000, 64, seed=7)
    if preset == "tiny-3n":
        ids[5:9] = list(range(G3N_TEXT, G3N_TEXT + 4))
    with Engine(original, n_ctx=256, backend="mlx", dtype=dtype) as a, \
            Engine(blob, n_ctx=256, backend="mlx", dtype=dtype) as b:
        assert b.tokenize(TEXTS[1]) == a.tokenize(TEXTS[1])
        np.testing.assert_array_equal(b.logits(ids), a.logits(ids))


# ------------------------------------------------------------------ the real Gemma 3 270M

@pytest.fixture(scope="module")
def real_270m(tmp_path_factory, real_gguf):
    """The real Gemma 3 270M (llama.cpp's Q4_K_M) and its Ollama-style rewrite (every Gemma 3
    quirk, a one-block vision tower of the 4B's width)."""
    original = real_gguf
    blob = tmp_path_factory.mktemp("real") / "gemma3-270m-ollama.gguf"
    summary = rewrite(original, blob, ["all"], vision=VisionSpec(blocks=1))
    return original, blob, summary


def test_real_270m_blob_tokenizes_and_configures_as_the_original(real_270m):
    original, blob, _ = real_270m
    a, b = _core.ModelFile(str(original)), _core.ModelFile(str(blob))
    assert b.config == a.config and b.n_vocab == a.n_vocab == 262144
    for text in TEXTS:
        for special in (False, True):
            ids = a.tokenize(text, True, special)
            assert b.tokenize(text, True, special) == ids, (text, special)
            assert b.detokenize(ids, special) == a.detokenize(ids, special)
    every = list(range(a.n_vocab))
    assert b.detokenize(every, True) == a.detokenize(every, True)


def test_real_270m_blob_computes_as_the_original(real_270m):
    original, blob, summary = real_270m
    assert_same_model(original, blob)
    with engine(blob) as e:
        e.logits(e.tokenize(TEXTS[0]))
        margin = 2 << 20
        present, total = _present_pages(blob.resolve(), summary["vision_range"][0] + margin,
                                        summary["vision_range"][1] - margin)
        assert total > 0 and present == 0
