"""A float64 forward pass of a Gemma 3 GGUF file: exact arithmetic on the values its weights encode.

The weights are gguf-py's dequantization of the file (the exact values the blocks encode); every
operation after that runs in float64, with no activation rounding anywhere. llama.cpp rounds its
activations (Q8_K / Q8_0 before each product, an fp16 GELU table, fp16 keys and values), so this
is the yardstick both engines are measured against on real weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.parts[f.data[0]]
    return value.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]


class Gemma3Reference:
    """Gemma 3 text model of a GGUF file, computed in float64 (llama.cpp's graph, no rounding)."""

    def __init__(self, path: str | Path) -> None:
        r = gguf.GGUFReader(path)
        arch = _field(r, "general.architecture")
        if arch != "gemma3":
            raise ValueError(f"{path}: architecture {arch!r}, expected gemma3")
        p = "gemma3."
        self.n_embd = int(_field(r, p + "embedding_length"))
        self.n_layer = int(_field(r, p + "block_count"))
        self.n_head = int(_field(r, p + "attention.head_count"))
        self.n_head_kv = int(_field(r, p + "attention.head_count_kv"))
        self.head_dim = int(_field(r, p + "attention.key_length"))
        self.window = int(_field(r, p + "attention.sliding_window"))
        self.eps = float(_field(r, p + "attention.layer_norm_rms_epsilon", 1e-6))
        self.base = float(_field(r, p + "rope.freq_base", 1e6))
        self.base_swa = float(_field(r, p + "rope.freq_base_swa", 1e4))
        factor = float(_field(r, p + "rope.scaling.factor", 1.0))
        self.rope_scale = 1.0 / factor if _field(r, p + "rope.scaling.type") == "linear" else 1.0
        self.w = {t.name: self._values(t) for t in r.tensors}

    @staticmethod
    def _values(t) -> np.ndarray:
        # float32 holds every encoded value exactly; products are taken in float64 below.
        v = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        return v.reshape([int(d) for d in reversed(t.shape)])

    def _norm(self, x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return y if w is None else y * w.astype(np.float64)

    def _mat(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.w[name].astype(np.float64).T

    def _rope(self, x: np.ndarray, pos: np.ndarray, base: float, scale: float) -> np.ndarray:
        # NEOX rotation: element i pairs with i + d/2. x: [n, heads, d]
        d = x.shape[-1]
        inv = base ** (-2.0 * np.arange(d // 2) / d) * scale
        ang = pos[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def logits(self, ids: list[int], kv_type: str | None = None) -> np.ndarray:
        """float64 [len(ids), n_vocab]: every position of one fresh sequence, teacher-forced.

        ``kv_type`` "q8_0" or "q4_0": keys and values pass through that KV-cache type (float32
        values quantized per 32-value block as ggml quantizes them, then dequantized exactly);
        None: they stay exact.
        """
        n, E, H, KV, D = len(ids), self.n_embd, self.n_head, self.n_head_kv, self.head_dim
        emb = self.w["token_embd.weight"]
        x = emb[ids].astype(np.float64) * math.sqrt(E)
        pos = np.arange(n, dtype=np.float64)
        causal = np.tril(np.ones((n, n), bool))
        local = causal & (pos[:, None] - pos[None, :] < self.window)
        for layer in range(self.n_layer):
            b = f"blk.{layer}."
            swa = layer % 6 < 5
            xn = self._norm(x, self.w[b + "attn_norm.weight"])
            q = self._mat(b + "attn_q.weight", xn).reshape(n, H, D)
            k = self._mat(b + "attn_k.weight", xn).reshape(n, KV, D)
            v = self._mat(b + "attn_v.weight", xn).reshape(n, KV, D)
            q = self._norm(q, self.w[b + "attn_q_norm.weight"])
            k = self._norm(k, self.w[b + "attn_k_norm.weight"])
            base, scale = (self.base_swa, 1.0) if swa else (self.base, self.rope_scale)
            q = self._rope(q, pos, base, scale) / math.sqrt(D)
            k = self._rope(k, pos, base, scale)
            if kv_type is not None:
                k, v = kv_round(k, kv_type), kv_round(v, kv_type)
            k = np.repeat(k, H // KV, axis=1)
            v = np.repeat(v, H // KV, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k)
            s = np.where((local if swa else causal)[None], s, -np.inf)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = np.einsum("hqk,khd->qhd", s, v).reshape(n, H * D)
            o = self._mat(b + "attn_output.weight", o)
            x = x + self._norm(o, self.w[b + "post_attention_norm.weight"])
            y = self._norm(x, self.w[b + "ffn_norm.weight"])
            g = self._mat(b + "ffn_gate.weight", y)
            gelu = 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
            f = self._mat(b + "ffn_down.weight", gelu * self._mat(b + "ffn_up.weight", y))
            x = x + self._norm(f, self.w[b + "post_ffw_norm.weight"])
        h = self._norm(x, self.w["output_norm.weight"])
        out = self.w.get("output.weight", emb)
        logits = np.empty((n, out.shape[0]))
        for r0 in range(0, out.shape[0], 32768):  # bounded float64 temporaries
            logits[:, r0:r0 + 32768] = h @ out[r0:r0 + 32768].astype(np.float64).T
        return logits


def kv_round(x: np.ndarray, kv_type: str) -> np.ndarray:
    """x [..., D] (D a multiple of 32) as a KV cache of ``kv_type`` holds it, dequantized: each
    32-value block of the float32 values quantized as ggml's CPU backend quantizes a row it
    copies into such a cache (Q8_0: scale amax / 127 stored fp16, values times 127 / amax
    rounded to nearest even; Q4_0: scale (the value of largest magnitude) / -8, values
    x / scale + 8.5 truncated and capped at 15)."""
    b = x.astype(np.float32).reshape(-1, 32)
    if kv_type == "q8_0":
        amax = np.abs(b).max(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        q = np.rint(b * inv)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
        out = d * q
    elif kv_type == "q4_0":
        idx = np.abs(b).argmax(axis=1)
        mx = b[np.arange(len(b)), idx][:, None]
        d = (mx / np.float32(-8)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        q = np.minimum(15, np.trunc(b * inv + np.float32(8.5)))
        out = d.astype(np.float16).astype(np.float64) * (q - 8)
    else:
        raise ValueError(f"kv_type must be q8_0 or q4_0, got {kv_type!r}")
    return out.reshape(x.shape)
