"""The MLX backend's "quantized" conversion: GGUF quantized matrices as MLX quantized matrices.

Per type, the MLX arrays must dequantize to exactly the file's values where MLX's affine form
expresses the type (``quant.EXACT``), and closely where the type is re-quantized
(``quant.REQUANTIZED``): on random blocks, on gguf-py's quantizer output, on tiny models that
llama.cpp quantizes to each type, and on the real Gemma 3 270M Q4_K_M file, whose greedy text
must match the native backend's (where the two disagree, only at a near tie).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from support import rel_err

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import gguf  # noqa: E402
import gguf.quants  # noqa: E402

from conftest import oracle, prompt_ids  # noqa: E402
from pyengine import Engine, _core  # noqa: E402
from pyengine.mlx_backend import convert, quant  # noqa: E402

T = gguf.GGMLQuantizationType
# Byte offsets of each type's float16 scales inside a block: random bytes there would often be
# inf or NaN, so the random blocks get finite scales of many magnitudes and both signs.
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ4_NL": [0], "IQ4_XS": [0]}
# The llama.cpp file type that gives each weight type (with ``pure``: every matrix of it).
FTYPES = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
          "Q2_K": "Q2_K", "Q3_K": "Q3_K_S", "Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S", "Q6_K": "Q6_K",
          "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}
# 8-bit min-max re-quantization rounds each value by at most half a step of range / 255; on
# Q6_K and Q2_K weights that is a relative RMS error near 0.5%.
REQUANT_MAX_REL_RMS = 1e-2


@pytest.fixture(autouse=True)
def mlx_cache(tmp_path_factory, monkeypatch):
    """Conversions go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("PYENGINE_MLX_CACHE", str(tmp_path_factory.getbasetemp() / "mlx-cache"))


def dequantized(p: quant.Packed | tuple, group_size: int, bits: int) -> np.ndarray:
    """MLX's dequantization of (packed weight, scales, biases)."""
    w, s, b = p[:3]
    return np.array(mx.dequantize(mx.array(w), mx.array(s), mx.array(b),
                                  group_size=group_size, bits=bits))


def random_blocks(ttype: str, rows: int, blocks: int, seed: int) -> np.ndarray:
    """[rows, blocks * block bytes] of random bytes with finite float16 scales."""
    rng = np.random.default_rng(seed)
    _values, nbytes = gguf.GGML_QUANT_SIZES[T[ttype]]
    raw = rng.integers(0, 256, (rows, blocks, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[ttype]:
        d = (rng.standard_normal((rows, blocks))
             * np.exp2(rng.integers(-14, 8, (rows, blocks)))).astype(np.float16)
        raw[..., off:off + 2] = d[..., None].view(np.uint8).reshape(rows, blocks, 2)
    return raw.reshape(rows, -1)


def reference(ttype: str, raw: np.ndarray) -> np.ndarray:
    """gguf-py's dequantization: its port of ggml's reference code."""
    return gguf.quants.dequantize(raw, T[ttype]).reshape(raw.shape[0], -1)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_uses_mlx_bit_order(bits):
    """``quant.pack`` lays quants out as the installed MLX reads them (checked, not assumed)."""
    q = np.random.default_rng(bits).integers(0, 1 << bits, (4, 128)).astype(np.uint8)
    ones = np.ones((4, 4), np.float32)
    got = dequantized((quant.pack(q, bits), ones, 0 * ones), 32, bits)
    np.testing.assert_array_equal(got, q.astype(np.float32))
    # And MLX's own quantizer packs the same way.
    wq, s, b = mx.quantize(mx.array(q.astype(np.float32)), group_size=32, bits=bits)
    back = np.rint((dequantized((wq, s, b), 32, bits) - np.repeat(np.array(b), 32, 1))
                   / np.repeat(np.array(s), 32, 1)).astype(np.uint8)
    np.testing.assert_array_equal(quant.pack(back, bits), np.array(wq))


@pytest.mark.parametrize("ttype", sorted(quant.EXACT))
def test_exact_types_dequantize_to_the_reference_values(ttype):
    """Random blocks (every bit pattern of quants, scales and mins): MLX's dequantization of
    the converted arrays equals ggml's reference values and the native core's."""
    raw = random_blocks(ttype, rows=16, blocks=8, seed=len(ttype))
    p = quant.to_mlx(ttype, raw)
    got = dequantized(p, p.group_size, p.bits)
    # Equal as numbers: only a zero's sign may differ (see quant's docstring).
    np.testing.assert_array_equal(got, reference(ttype, raw))
    core = _core.dequantize(ttype, raw, got.size).reshape(got.shape)
    np.testing.assert_array_equal(got, core)


@pytest.mark.parametrize("ttype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_gguf_py_quantized_matrices_convert_exactly(ttype):
    """Matrices as gguf-py quantizes them (realistic scales): the MLX arrays hold exactly the
    values the native core reads from the same bytes."""
    w = np.random.default_rng(3).standard_normal((24, 256)).astype(np.float32) * 0.05
    raw = gguf.quants.quantize(w, T[ttype])
    p = quant.to_mlx(ttype, raw)
    assert (p.bits, p.group_size) == ({"Q8_0": 8, "Q5_0": 5, "Q5_1": 5}.get(ttype, 4), 32)
    np.testing.assert_array_equal(dequantized(p, 32, p.bits),
                                  _core.dequantize(ttype, raw, w.size).reshape(w.shape))


@pytest.fixture(scope="session")
def llama_quantized(make_model, tmp_path_factory):
    """path(ttype, preset="tiny", ftype=None): a tiny model with every matrix llama.cpp
    quantizes of ``ttype`` (``pure``; it keeps some Gemma 3n matrices F32), or, given a
    llama.cpp file type such as "Q4_K_M", the mix of types that file type picks.

    The Gemma 3 model has n_embd 256 and n_ff 512 so that every row is whole 256-value blocks
    (with the preset's 128, llama.cpp would fall back to Q5_0 / Q8_0 for the K-quants).
    """
    import llama_cpp

    folder = tmp_path_factory.mktemp("llama-quantized")
    made: dict[tuple[str, str], Path] = {}

    def get(ttype: str = "", preset: str = "tiny", ftype: str | None = None) -> Path:
        key = (ftype or ttype, preset)
        if key not in made:
            shape = {"n_embd": 256, "n_ff": 512} if preset == "tiny" else {}
            src = make_model(preset, "f32", **shape)
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype or FTYPES[ttype]}")
            params.pure = ftype is None
            params.nthread = 2
            dst = folder / f"{preset}-{ftype or ttype}.gguf"
            assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                                  ctypes.byref(params)) == 0
            made[key] = dst
        return made[key]

    return get


def _mlx_target(gguf_name: str, n_layer: int) -> str:
    """mlx-lm's layer for a Gemma 3 matrix (without ".weight")."""
    _spec, (target,) = convert.mlx_names("gemma3", n_layer)[gguf_name]
    return target.removesuffix(".weight")


def check_converted(mf: _core.ModelFile, weights: dict,
                    values_of: Callable[[str], np.ndarray]) -> dict[str, float]:
    """Asserts every quantized matrix of a Gemma 3 file converted as its type promises: the
    exact types to ``values_of(name)`` exactly, in their bit width and group size, the others
    within REQUANT_MAX_REL_RMS. Returns the relative RMS error of each re-quantized one."""
    errors = {}
    for name, ttype in mf.tensor_types.items():
        if ttype in ("F32", "F16", "BF16"):
            continue
        target = _mlx_target(name, mf.config["n_layer"])
        w, s = weights[target + ".weight"], weights[target + ".scales"]
        values = values_of(name)
        cols = values.shape[-1]
        group_size, bits = cols // s.shape[-1], w.shape[-1] * 32 // cols
        got = dequantized((w, s, weights[target + ".biases"]), group_size, bits)
        if ttype in quant.EXACT:
            one_row = quant.to_mlx(ttype, mf.tensor_raw(name)[1][:1])
            assert (bits, group_size) == (one_row.bits, one_row.group_size), name
            np.testing.assert_array_equal(got, values, err_msg=name)
        else:
            assert ttype in quant.REQUANTIZED and bits == quant.REQUANTIZED[ttype], name
            errors[name] = float(np.sqrt(((got - values) ** 2).sum() / (values ** 2).sum()))
            assert errors[name] <= REQUANT_MAX_REL_RMS, (name, errors[name])
    return errors


def agreement(logits: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max relative L2 error per position, top-1 agreement) of logits against ref."""
    err = rel_err(logits, ref)
    return float(err.max()), float(np.mean(logits.argmax(1) == ref.argmax(1)))


def check_model(path: Path, n_vocab: int = 3072) -> None:
    """The MLX model of a quantized file (the default conversion) against llama.cpp and, where
    every type converts exactly, against the float32 conversion of the same file."""
    mf = _core.ModelFile(str(path))
    types = set(mf.tensor_types.values()) - {"F32"}
    ids = prompt_ids(n_vocab, 120)  # past the sliding window (32)
    llm = oracle(path)
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
    with Engine(path, n_ctx=512, backend="mlx") as eng:
        assert eng.config["mlx_dtype"] == "quantized"  # the default for quantized files
        ours = eng.logits(ids).astype(np.float64)
    err, top1 = agreement(ours, ref)
    # llama.cpp quantizes the activations (to 8 bits) where MLX keeps them float32: the tiny
    # models' spread between the two measured 3e-2..6e-2 and 94%..98%.
    assert err <= 1e-1 and top1 >= 0.93, (types, err, top1)
    if types <= set(quant.EXACT):
        # The float32 conversion dequantizes with the native core: the same values, so the
        # same logits but for the order of float32 sums.
        with Engine(path, n_ctx=512, backend="mlx", dtype="float32") as eng:
            floats = eng.logits(ids).astype(np.float64)
        assert agreement(ours, floats)[0] <= 1e-5, types


@pytest.mark.parametrize("ttype", sorted(FTYPES))
def test_llama_cpp_quantized_models(llama_quantized, ttype):
    """A Gemma 3 model whose every matrix is ``ttype``: each converted matrix holds the file's
    values (re-quantized: close ones), the quantized MLX model computes what the float32
    conversion computes for the exact types, and its logits agree with llama.cpp's."""
    path = llama_quantized(ttype)
    mf = _core.ModelFile(str(path))
    assert set(mf.tensor_types.values()) == {"F32", ttype}
    check_converted(mf, convert.mlx_weights(mf, "quantized"),
                    lambda name: reference(ttype, mf.tensor_raw(name)[1]))
    check_model(path)
    # The native core reads the same values (its dequantization is the reference's).
    check_converted(mf, convert.mlx_weights(mf, "quantized"), mf.tensor)


def test_gemma3n_quantized_model(llama_quantized):
    """Gemma 3n with llama.cpp's Q4_0 matrices (4-bit embeddings and per-layer embeddings
    included) against llama.cpp and its float32 conversion."""
    check_model(llama_quantized("Q4_0", "tiny-3n"))


def test_gemma3n_stacked_matrices_split_per_stream(make_model):
    """Gemma 3n's stacked AltUp projections [3, E, E] (Q8_0 in the synthetic file; llama.cpp
    keeps them F32) become three quantized layers, each exactly its slice."""
    path = make_model("tiny-3n", "q8_0")
    mf = _core.ModelFile(str(path))
    weights = convert.mlx_weights(mf, "quantized")
    for gguf_name, group in (("altup_proj.weight", "altup_projections"),
                             ("altup_unembd_proj.weight", "altup_unembed_projections")):
        values = mf.tensor(gguf_name)
        assert values.shape[0] == 3
        for k in range(3):
            base = f"model.language_model.{group}.{k}"
            np.testing.assert_array_equal(
                dequantized((weights[base + ".weight"], weights[base + ".scales"],
                             weights[base + ".biases"]), 32, 8), values[k])


def test_mixed_file_runs_from_its_cache_folder(llama_quantized, tmp_path, monkeypatch):
    """A Q4_K_M mix (Q4_K, Q6_K and others by layer) converts to layers of different bit
    widths; the cache keeps it under the conversion's format version, ignores an entry of an
    older format, and its folder loads alone with the same logits."""
    from pyengine.mlx_backend import cache

    monkeypatch.setenv("PYENGINE_MLX_CACHE", str(tmp_path))
    path = llama_quantized(ftype="Q4_K_M")
    mf = _core.ModelFile(str(path))
    assert {"Q4_K", "Q6_K"} <= set(mf.tensor_types.values())
    digest = cache.file_digest(path)
    stale = tmp_path / f"{digest}-q8-v1"  # what the previous format would have written
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / "model.safetensors").write_bytes(b"not safetensors")
    check_converted(mf, convert.mlx_weights(mf, "quantized"), mf.tensor)
    ids = prompt_ids(3072, 60)
    with Engine(path, n_ctx=512, backend="mlx", dtype="q8") as eng:  # "q8": the former name
        assert eng.config["mlx_dtype"] == "quantized"
        first = eng.logits(ids)
    entry = cache.entry_dir(tmp_path, digest, "quantized")
    assert entry.name == f"{digest}-quantized-v{cache.FORMAT}" and cache.FORMAT >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.name, stale.name])
    with Engine(entry, n_ctx=512, backend="mlx") as eng:
        np.testing.assert_array_equal(eng.logits(ids), first)


@pytest.fixture(scope="module")
def gemma3_270m(real_gguf) -> Path:
    return real_gguf


def test_gemma3_270m_converts_exactly(gemma3_270m):
    """The real Q4_K_M file (F32, Q8_0, Q5_0, Q4_K, Q6_K): every Q8_0, Q5_0 and Q4_K matrix
    dequantizes in MLX to exactly the native core's values, every Q6_K one within 1%."""
    mf = _core.ModelFile(str(gemma3_270m))
    types = set(mf.tensor_types.values())
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= types
    errors = check_converted(mf, convert.mlx_weights(mf, "quantized"), mf.tensor)
    assert len(errors) == sum(t == "Q6_K" for t in mf.tensor_types.values())


# Chosen before any was run; "The capital of France is" was asked for.
REAL_PROMPTS = ["The capital of France is", "Water boils at a temperature of",
                "Here is a short poem about the sea:", "def fibonacci(n):"]
N_TOKENS = 16
# A near tie: each engine ranks the other's choice within this many logits of its own. It is
# the 95th percentile of how far llama.cpp and the native core, the two references, move the
# top-1/top-2 margin on these same prompts' greedy continuations (median 0.1, max 0.84).
NEAR_TIE = 0.3


def test_gemma3_270m_greedy_text_matches_native(gemma3_270m):
    """Greedy text of the MLX backend (the default, quantized conversion) equals the native
    backend's, or first differs where both engines see a near tie."""
    with Engine(gemma3_270m, n_ctx=512, backend="mlx") as mlx, \
            Engine(gemma3_270m, n_ctx=512, backend="native") as native:
        assert mlx.config["mlx_dtype"] == "quantized"
        options = {"max_tokens": N_TOKENS, "temperature": 0.0, "ignore_eos": True}
        # All prompts at once: MLX decodes them in one batch (the same tokens as alone, see
        # test_mlx_backend), which is what keeps this test short on MLX's CPU build.
        with ThreadPoolExecutor(len(REAL_PROMPTS)) as pool:
            mlx_out = list(pool.map(lambda p: mlx.generate(p, **options), REAL_PROMPTS))
        for prompt, ours in zip(REAL_PROMPTS, mlx_out):
            theirs = native.generate(prompt, **options)
            if ours.tokens == theirs.tokens:
                continue
            k = next(i for i, (a, b) in enumerate(zip(ours.tokens, theirs.tokens)) if a != b)
            ids = native.tokenize(prompt) + theirs.tokens[:k]
            lm, ln = mlx.logits(ids)[-1], native.logits(ids)[-1]
            gap_mlx = float(lm.max() - lm[theirs.tokens[k]])
            gap_native = float(ln.max() - ln[ours.tokens[k]])
            assert gap_mlx <= NEAR_TIE and gap_native <= NEAR_TIE, (
                f"{prompt!r} step {k}: MLX ranks native's token {gap_mlx:.3f} below its own, "
                f"native ranks MLX's {gap_native:.3f} below: not a near tie\n"
                f"MLX:    {ours.text!r}\nnative: {theirs.text!r}")
