"""GGUF quantized blocks as MLX affine quantization, value for value.

MLX stores a quantized matrix as unsigned ``bits``-wide integers q packed into uint32 words and,
per group of ``group_size`` consecutive values of a row, a scale s and a bias b: w = s * q + b,
computed in the scales' type. Many GGUF block types are exactly that with groups of 32:

======== ==== ===== ============================= ===========================================
type     bits group q                             s, b
======== ==== ===== ============================= ===========================================
Q4_0     4    32    the 4-bit quant               d, -8 d
Q4_1     4    32    the 4-bit quant               d, m
Q5_0     5    32    the 5-bit quant               d, -16 d
Q5_1     5    32    the 5-bit quant               d, m
Q8_0     8    32    int8 quant + 128              d, -128 d
Q4_K     4    32    the sub-block's 4-bit quant   d * sc, -(dmin * m)
Q5_K     5    32    the sub-block's 5-bit quant   d * sc, -(dmin * m)
Q3_K     8    128   (sc - 32) * (q - 4) + 124     d, -124 d
IQ4_NL   8    32    table[q] + 128                d, -128 d
IQ4_XS   8    32    table[q] + 128                d * (ls - 32), -128 d * (ls - 32)
======== ==== ===== ============================= ===========================================

With float32 scales and biases every product and sum above is exact or rounds exactly as the
reference dequantization (``ggml``'s, which the native core reproduces) rounds it: the scales
are products of a float16 and an integer of at most 7 bits, s * q needs at most 24 significant
bits, and where the reference subtracts a rounded min (Q4_K, Q5_K) MLX adds the same negated
value. So ``mx.dequantize`` gives the file's values; only a zero may differ in sign (the
reference's (q - 8) * d is -0.0 for a negative d where MLX's 8 d - 8 d is +0.0).

Q3_K's 3-bit quants do not fit 3 bits per value in MLX (its scales change every 16 values,
MLX's groups are at least 32), but its values are d times an integer in [-124, 128], so 8 bits
with d's own scale hold them; IQ4_NL and IQ4_XS are likewise d times a table entry in [-127,
113]. Q6_K and Q2_K have no exact MLX form: Q6_K's 16-value sub-blocks carry independent
scales with 64 levels each, Q2_K's carry independent mins (see ``REQUANTIZED``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

# IQ4_NL / IQ4_XS: the 16 non-linear levels (ggml's kvalues_iq4nl).
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      dtype=np.int16)


class Affine(NamedTuple):
    """One matrix in MLX's affine layout, before packing."""

    q: np.ndarray       # uint8 [rows, cols]: unsigned quants, each < 2**bits
    scales: np.ndarray  # float32 [rows, cols / group_size]
    biases: np.ndarray  # float32 [rows, cols / group_size]
    bits: int
    group_size: int


class Packed(NamedTuple):
    """One matrix as MLX's quantized layers hold it."""

    weight: np.ndarray  # uint32 [rows, cols * bits / 32]
    scales: np.ndarray  # float32 [rows, cols / group_size]
    biases: np.ndarray  # float32 [rows, cols / group_size]
    bits: int
    group_size: int


def _f16(raw: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of every block, as float32: [..., nblocks]."""
    return np.ascontiguousarray(raw[..., start:start + 2]).view(np.float16)[..., 0].astype(
        np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 32-value nibble layout: byte j holds value j (low) and value j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits_of(word_bytes: np.ndarray, n: int) -> np.ndarray:
    """Bit i (0 <= i < n) of little-endian bytes [..., n / 8] as uint8 [..., n]."""
    return np.unpackbits(word_bytes, axis=-1, bitorder="little")[..., :n]


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    rows, nbytes = raw.shape
    if nbytes % block_bytes:
        raise ValueError(f"rows of {nbytes} bytes are not whole {block_bytes}-byte blocks")
    return raw.reshape(rows, nbytes // block_bytes, block_bytes)


def _legacy(raw: np.ndarray, block_bytes: int, has_min: bool, has_high: bool,
            offset: int) -> Affine:
    """Q4_0, Q4_1, Q5_0, Q5_1: {f16 d; [f16 m]; [u32 qh]; u8 qs[16]} per 32 values."""
    b = _blocks(raw, block_bytes)
    d = _f16(b, 0)
    pos = 4 if has_min else 2
    q = _nibbles(b[..., pos + (4 if has_high else 0):])
    if has_high:  # bit j of qh is value j's fifth bit
        q = q | (_bits_of(b[..., pos:pos + 4], 32) << 4)
    bias = _f16(b, 2) if has_min else d * np.float32(-offset)
    rows = raw.shape[0]
    return Affine(q.reshape(rows, -1), d, bias, 5 if has_high else 4, 32)


def _q8_0(raw: np.ndarray) -> Affine:
    b = _blocks(raw, 34)
    d = _f16(b, 0)
    q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return Affine(q.reshape(raw.shape[0], -1), d, d * np.float32(-128.0), 8, 32)


def _k_scales_mins(sc12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: the 8 six-bit scales and mins packed in 12 bytes: [..., 8] each."""
    lo, hi = sc12[..., 0:4], sc12[..., 8:12]
    mid = sc12[..., 4:8]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, mn


def _k_affine(raw: np.ndarray, five_bit: bool) -> Affine:
    """Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]} and Q5_K (u8 qh[32] before qs) per 256.

    qs byte 32 k + l holds value l of sub-block 2 k (low nibble) and of 2 k + 1 (high); Q5_K's
    fifth bit of value l of sub-block i is bit i of qh[l].
    """
    b = _blocks(raw, 176 if five_bit else 144)
    rows, nb = b.shape[:2]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[..., 4:16])
    qs = b[..., 48:176] if five_bit else b[..., 16:144]
    qs = qs.reshape(rows, nb, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, nb, 8, 32)
    if five_bit:
        qh = b[..., 16:48]  # [rows, nb, 32]
        high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # [.., 8, 32]
        q = q | (high << 4)
    # The reference computes d * sc and dmin * m in float32 and then d1 * q - m1.
    scales = d[..., None] * sc.astype(np.float32)
    biases = -(dmin[..., None] * mn.astype(np.float32))
    return Affine(q.reshape(rows, -1), scales.reshape(rows, -1), biases.reshape(rows, -1),
                  5 if five_bit else 4, 32)


def _q3_k(raw: np.ndarray) -> Affine:
    """Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d} per 256: value = d * (sc - 32) *
    (q - 4) with a 3-bit q (two bits in qs, the third in hmask) and sixteen 6-bit scales."""
    b = _blocks(raw, 110)
    rows, nb = b.shape[:2]
    hmask, qs, s12, d = b[..., 0:32], b[..., 32:96], b[..., 96:108], _f16(b, 108)
    # Value 128 h + 32 j + l (h < 2, j < 4, l < 32): bits 2 j..2 j+1 of qs[32 h + l], its
    # third bit is bit 4 h + j of hmask[l], its scale is number 8 h + 2 j + l // 16.
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
    low = (qs.reshape(rows, nb, 2, 1, 32) >> shifts) & 3                      # [.., 2, 4, 32]
    hbit = (hmask[..., None, None, :] >> np.arange(8, dtype=np.uint8).reshape(2, 4, 1)) & 1
    t = (low | (hbit << 2)).astype(np.int16) - 4                              # -4..3
    # scale k: low 4 bits from byte k (k < 8) or the high nibble of byte k - 8; high 2 bits
    # from byte 8 + k % 4, at bit 2 (k // 4).
    k = np.arange(16)
    low4 = np.where(k < 8, s12[..., k % 8] & 0x0F, s12[..., k % 8] >> 4)
    high2 = (s12[..., 8 + k % 4] >> (2 * (k // 4)).astype(np.uint8)) & 3
    sc = (low4 | (high2 << 4)).astype(np.int16) - 32                          # [.., 16]
    n = sc.reshape(rows, nb, 2, 4, 2, 1) * t.reshape(rows, nb, 2, 4, 2, 16)   # -124..128
    q = (n + 124).astype(np.uint8).reshape(rows, nb, 2, 128)
    # Groups of 128 never straddle two blocks: one d per group.
    scales = np.repeat(d, 2, axis=-1)
    return Affine(q.reshape(rows, -1), scales, scales * np.float32(-124.0), 8, 128)


def _iq4_nl(raw: np.ndarray) -> Affine:
    """IQ4_NL {f16 d; u8 qs[16]} per 32: value = d * table[q], Q4_0's nibble layout."""
    b = _blocks(raw, 18)
    d = _f16(b, 0)
    q = (IQ4_LEVELS[_nibbles(b[..., 2:])] + 128).astype(np.uint8)
    return Affine(q.reshape(raw.shape[0], -1), d, d * np.float32(-128.0), 8, 32)


def _iq4_xs(raw: np.ndarray) -> Affine:
    """IQ4_XS {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]} per 256: sub-block i of 32 has
    the 6-bit scale ls (low nibble i of scales_l, bits 2 i..2 i+1 of scales_h), value =
    d * (ls - 32) * table[q], its nibbles laid out as IQ4_NL's."""
    b = _blocks(raw, 136)
    rows, nb = b.shape[:2]
    d = _f16(b, 0)
    scales_h = np.ascontiguousarray(b[..., 2:4]).view(np.uint16)[..., 0]
    i = np.arange(8)
    low = (b[..., 4 + i // 2] >> (4 * (i % 2)).astype(np.uint8)) & 0x0F
    high = (scales_h[..., None] >> (2 * i).astype(np.uint16)) & 3
    ls = (low.astype(np.int16) | (high.astype(np.int16) << 4)) - 32
    dl = d[..., None] * ls.astype(np.float32)                                 # [rows, nb, 8]
    q = (IQ4_LEVELS[_nibbles(b[..., 8:].reshape(rows, nb, 8, 16))] + 128).astype(np.uint8)
    dl = dl.reshape(rows, -1)
    return Affine(q.reshape(rows, -1), dl, dl * np.float32(-128.0), 8, 32)


# GGUF type -> its exact MLX affine form (see the module docstring).
EXACT: dict[str, Callable[[np.ndarray], Affine]] = {
    "Q4_0": lambda r: _legacy(r, 18, has_min=False, has_high=False, offset=8),
    "Q4_1": lambda r: _legacy(r, 20, has_min=True, has_high=False, offset=0),
    "Q5_0": lambda r: _legacy(r, 22, has_min=False, has_high=True, offset=16),
    "Q5_1": lambda r: _legacy(r, 24, has_min=True, has_high=True, offset=0),
    "Q8_0": _q8_0,
    "Q4_K": lambda r: _k_affine(r, five_bit=False),
    "Q5_K": lambda r: _k_affine(r, five_bit=True),
    "Q3_K": _q3_k,
    "IQ4_NL": _iq4_nl,
    "IQ4_XS": _iq4_xs,
}

# Types with no exact MLX form -> the bits they are re-quantized to, from their exact float32
# values, by MLX's own (min-max) quantizer in groups of REQUANT_GROUP. 8 bits with float32
# scales and biases take 10 bits a value where dequantizing takes 32 (float32; float16 would
# make MLX convert the matrix at every product), so a Q4_K_M file stays near its size: its Q6_K
# tensors include, in larger models, the embeddings. The cost, measured on Gemma 3 270M's Q6_K
# matrices: a relative RMS error of 0.5% in the weights, a quarter of Q6_K's own rounding
# (6 bits would double that); see the README's MLX section for its effect on the logits.
REQUANTIZED = {"Q6_K": 8, "Q2_K": 8}
REQUANT_GROUP = 32


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 quants [rows, cols] (cols a multiple of 32) packed as MLX packs them: each row one
    little-endian bit stream, value i in bits [i * bits, (i + 1) * bits), read as uint32."""
    rows, cols = q.shape
    if bits == 8:
        return np.ascontiguousarray(q).view(np.uint32)
    # Eight values fill exactly ``bits`` bytes: build them in a uint64 and keep those bytes.
    eight = q.reshape(rows, cols // 8, 8).astype(np.uint64)
    shifts = np.arange(0, 8 * bits, bits, dtype=np.uint64)
    words = np.bitwise_or.reduce(eight << shifts, axis=-1)                    # [rows, cols/8]
    out = words[..., None].view(np.uint8)[..., :bits]                         # little-endian
    return np.ascontiguousarray(out).reshape(rows, -1).view(np.uint32)


def to_mlx(ttype: str, raw: np.ndarray) -> Packed:
    """A matrix's stored bytes [rows, bytes per row] of an ``EXACT`` type, in MLX's layout."""
    a = EXACT[ttype](raw)
    return Packed(pack(a.q, a.bits), np.ascontiguousarray(a.scales),
                  np.ascontiguousarray(a.biases), a.bits, a.group_size)
