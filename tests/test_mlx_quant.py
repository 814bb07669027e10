"""GGUF quantized blocks as MLX quantized matrices (``pyengine.mlx_backend.quant``).

Per type, the MLX arrays must dequantize to exactly the values ggml's reference gives where
MLX's affine form expresses the type (``quant.EXACT``): on random blocks and on gguf-py's
quantizer output.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import gguf  # noqa: E402
import gguf.quants  # noqa: E402

from pyengine import _core  # noqa: E402
from pyengine.mlx_backend import quant  # noqa: E402

T = gguf.GGMLQuantizationType
# Byte offsets of each type's float16 scales inside a block: random bytes there would often be
# inf or NaN, so the random blocks get finite scales of many magnitudes and both signs.
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ4_NL": [0], "IQ4_XS": [0]}


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
    if ttype == "IQ4_XS" and not np.array_equal(core, reference(ttype, raw)):
        pytest.xfail("the native core's IQ4_XS dequantization differs from ggml's reference")
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
