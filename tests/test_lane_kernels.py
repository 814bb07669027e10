"""The quantized types of Ollama's and llama.cpp's files (Q4_0 ... IQ4_XS): dequantization equals
gguf-py's bit for bit, and every kernel level's products equal exact arithmetic on the values the
blocks encode, times the activations quantized as llama.cpp quantizes them for Q8_0 weights
(blocks of 32; llama.cpp's K-quant path uses blocks of 256, which round real activations,
whose outliers set a block's scale, far more coarsely)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import quantize

from pyengine import _core

Q = gguf.GGMLQuantizationType
# Where each type keeps its fp16 scales (d, and dmin / m where it has one) inside a block.
HALF_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "IQ4_NL": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ4_XS": (0,),
}
TYPES = list(HALF_FIELDS)
# Ragged on purpose: rows that leave a partial group of 16, token counts that leave a partial
# tile of 8, one token (decode) and several (prompts, batched decode).
# 37 tokens: two whole tiles of 16 for the AMX kernels where the CPU has them, and 5 more.
SHAPES = [(1, 1, 1), (17, 2, 3), (33, 3, 8), (48, 1, 13), (100, 2, 1), (7, 1, 9), (33, 2, 37)]


def random_blocks(type_name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """[rows, cols] weights as random blocks: every quant bit pattern, scales of sane size."""
    qt = Q[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for off in HALF_FIELDS[type_name]:
        halves = (rng.uniform(0.5, 2.0, raw.shape[0]) * 1e-2).astype(np.float16)
        halves[rng.random(raw.shape[0]) < 0.3] *= -1  # negative scales happen in real files
        raw[:, off:off + 2] = halves.view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    raw = quantize(x, Q.Q8_0)
    return np.asarray(gguf.quants.dequantize(raw, Q.Q8_0), np.float64)


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantization_is_gguf_py_bit_for_bit(type_name):
    block = gguf.GGML_QUANT_SIZES[Q[type_name]][0]
    raw = random_blocks(type_name, 8, 2 * max(block, 256), seed=1)
    n = 8 * 2 * max(block, 256)
    ref = gguf.quants.dequantize(raw.reshape(8, -1), Q[type_name]).astype(np.float32).ravel()
    got = _core.dequantize(type_name, raw, n)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows,units,n", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_product_matches_exact_arithmetic_and_the_reference(isa, type_name, rows, units, n,
                                                            threads):
    cols = units * 256  # a whole number of blocks for both families
    raw = random_blocks(type_name, rows, cols, seed=rows * 100 + units)
    w = np.asarray(gguf.quants.dequantize(raw.reshape(rows, -1), Q[type_name]), np.float64)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    x[:, 5] *= 40  # an outlier, as real activations have: it sets a block's scale
    xq = quantize_q8_0(x)
    got = _core.matmul(type_name, raw, rows, cols, x, threads).astype(np.float64)
    _core.set_isa("scalar")
    ref = _core.matmul(type_name, raw, rows, cols, x, 1).astype(np.float64)
    exact = xq @ w.T
    scale = np.abs(xq) @ np.abs(w).T
    assert got.shape == (n, rows)
    # Integer sums are exact; the float scales and the summation order round in float32.
    assert np.all(np.abs(got - exact) <= 2e-6 * scale + 1e-6), np.max(np.abs(got - exact) / scale)
    assert np.all(np.abs(got - ref) <= 2e-6 * scale + 1e-6)


def test_a_hand_built_q6_k_block():
    """A Q6_K block laid out by hand (its quants split over low nibbles and high crumbs, per
    blocks.h) holds exactly w and multiplies as the Q8_0 activations say."""
    x = np.zeros((1, 256), np.float32)
    x[0, 0] = 127.0  # scale 1 for the first activation block: its values are their own quants
    x[0, 1] = 2.5
    x[0, 2] = 3.5
    w = np.zeros((1, 256), np.float32)
    w[0, 1] = w[0, 2] = 1.0
    # A Q6_K block holding exactly w: scale 1 on sub-block 0, u - 32 = w.
    block = np.zeros(210, np.uint8)
    u = (np.asarray(w[0], np.int64) + 32).astype(np.uint8)
    for k in range(256):  # Q6_K's low nibbles (ql) and high crumbs (qh), as blocks.cc lays them
        n, r = divmod(k, 128)
        quarter, lo = divmod(r, 32)
        block[64 * n + 32 * (quarter % 2) + lo] |= (u[k] & 0xF) << (4 * (quarter // 2))
        block[128 + 32 * n + lo] |= (u[k] >> 4) << (2 * quarter)
    block[192:208] = 1
    block[208:210] = np.array([1.0], np.float16).view(np.uint8)
    assert np.array_equal(_core.dequantize("Q6_K", block, 256), w[0])
    y = _core.matmul("Q6_K", block, 1, 256, x, 1)
    # 2.5 -> 2 and 3.5 -> 4: halves round to even.
    assert y[0, 0] == pytest.approx(2.0 + 4.0)


@pytest.mark.skipif(not _core.amx_usable(), reason="this CPU, OS or build has no AMX")
@pytest.mark.parametrize("type_name", TYPES + ["Q8_0"])
def test_amx_products_equal_the_vnni_kernel_bit_for_bit(type_name):
    """Prompts on CPUs with AMX: the tile kernels make the same integer sums as vpdpbusd and
    apply the scales in the same order, so every float is the same (ragged rows, whole tiles of
    16 tokens and a remainder the VNNI kernel takes)."""
    rows, cols = 33, 512
    if type_name == "Q8_0":
        w = np.random.default_rng(7).standard_normal((rows, cols)).astype(np.float32)
        raw = quantize(w, Q.Q8_0).reshape(-1)
    else:
        raw = random_blocks(type_name, rows, cols, seed=7)
    x = np.random.default_rng(3).standard_normal((53, cols)).astype(np.float32)
    before_isa, before_amx = _core.isa(), _core.amx()
    try:
        _core.set_isa("avx512")
        for threads in (1, 2):
            _core.set_amx(True)
            tiles = _core.matmul(type_name, raw, rows, cols, x, threads)
            _core.set_amx(False)
            vnni = _core.matmul(type_name, raw, rows, cols, x, threads)
            assert np.array_equal(tiles.view(np.uint32), vnni.view(np.uint32))
    finally:
        _core.set_isa(before_isa)
        _core.set_amx(before_amx)


def test_amx_is_on_where_usable_unless_the_environment_says_0(tmp_path):
    import os
    import subprocess
    import sys

    code = "from pyengine import _core; print(_core.amx(), _core.amx_usable())"

    def state(**env):
        # Outside the source tree, so the installed package (with its core) is the one imported.
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                             cwd=tmp_path, capture_output=True, text=True, check=True)
        return out.stdout.split()

    usable = str(_core.amx_usable())
    assert state(PYENGINE_AMX="0") == ["False", usable]
    assert state(PYENGINE_AMX="1") == [usable, usable]
    if not _core.amx_usable():
        with pytest.raises(ValueError, match="AMX"):
            _core.set_amx(True)
