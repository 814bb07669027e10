"""Gemma 4 for the synthetic model writer: its metadata, which layer has which tensor, and the
per-layer shapes.

Gemma 4 keeps Gemma 3's attention and feed-forward blocks (norms stored as they are, no +1) and
changes per layer what Gemma 3 fixes for the model: full-attention layers have larger heads
(key_length) than sliding ones (key_length_swa) and may have fewer KV heads and no V projection
(V is then K's projection); full layers rotate with proportional RoPE (the rope_freqs factors:
1 for the rotated pairs, 1e30 for the rest); the last shared_kv_layers layers reuse the KV of
layer S-2 (sliding) or S-1 (full), S the first of them, and may be double-wide; small models
add Gemma 3n's per-layer inputs after the FFN, and the 26B-A4B adds routed experts beside every
dense FFN. The tensors themselves are declared once, in the native core's architecture table
(``_core.architecture_tensors``), whose ``only`` field says which layers have each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gguf

if TYPE_CHECKING:  # make_model imports this module
    from make_model import ModelConfig

ROTATED_FRACTION = 0.25  # proportional RoPE: the share of a full layer's pairs that rotate
UNROTATED_FACTOR = 1e30  # a frequency factor that leaves its pair still, as the converter writes


def is_sliding(cfg: ModelConfig, layer: int) -> bool:
    """The last layer of every period attends to everything; the others through the window."""
    return layer % cfg.swa_period < cfg.swa_period - 1


def first_shared(cfg: ModelConfig) -> int:
    return cfg.n_layer - cfg.shared_kv_layers


def owns_kv(cfg: ModelConfig, layer: int) -> bool:
    return layer < first_shared(cfg)


def head_dim(cfg: ModelConfig, layer: int) -> int:
    return cfg.head_dim if is_sliding(cfg, layer) else cfg.head_dim_full


def n_head_kv(cfg: ModelConfig, layer: int) -> int:
    return cfg.n_head_kv if is_sliding(cfg, layer) else cfg.n_head_kv_full


def n_ff(cfg: ModelConfig, layer: int) -> int:
    """Double-wide FFNs on the KV-shared layers where the model has them."""
    return cfg.n_ff * (2 if cfg.double_wide and not owns_kv(cfg, layer) else 1)


def dims(cfg: ModelConfig, layer: int) -> dict[str, int]:
    """Sizes of the table's dimension names in one layer (-1: the globals)."""
    full = next((i for i in range(cfg.n_layer) if not is_sliding(cfg, i)), 0)
    hd = head_dim(cfg, layer) if layer >= 0 else cfg.head_dim_full
    return {"n_embd": cfg.n_embd, "n_vocab": cfg.n_vocab, "head_dim": hd,
            "q_dim": cfg.n_head * hd,
            "kv_dim": (n_head_kv(cfg, layer) if layer >= 0 else cfg.n_head_kv) * hd,
            "n_ff": n_ff(cfg, layer) if layer >= 0 else cfg.n_ff,
            "per_layer_width": cfg.n_embd_per_layer,
            "per_layer_all": cfg.n_embd_per_layer * cfg.n_layer,
            "n_expert": cfg.n_expert, "n_ff_exp": cfg.n_ff_exp, "n_ff_exp_2": 2 * cfg.n_ff_exp,
            "rope_freqs": head_dim(cfg, full) // 2, "one": 1}


def has_tensor(cfg: ModelConfig, spec: dict[str, Any], layer: int) -> bool:
    """Whether the file gets this tensor in this layer (-1 for a global one)."""
    name, only = spec["name"], spec["only"]
    if only == "per_layer_inputs" and cfg.n_embd_per_layer == 0:
        return False
    if only == "moe" and cfg.n_expert == 0:
        return False
    if only == "kv_owners" and not owns_kv(cfg, layer):
        return False  # the converter leaves K and V out of the layers that reuse KV
    if not spec["per_layer"] and spec["optional"]:  # the output projection
        return not cfg.tied_embeddings
    if name == "attn_v.weight":
        return is_sliding(cfg, layer) or not cfg.full_k_eq_v
    if name == "ffn_gate_up_exps.weight":
        return cfg.fused_gate_up
    if name in ("ffn_gate_exps.weight", "ffn_up_exps.weight"):
        return not cfg.fused_gate_up
    if name == "layer_output_scale.weight":
        return cfg.layer_output_scale
    if name == "ffn_gate_inp.per_expert_scale":
        return False  # Ollama's name for ffn_down_exps.scale (see ollama_style.py)
    return True


def fixed_values(cfg: ModelConfig, name: str) -> list[float] | None:
    """A tensor whose values are set, not drawn: the full layers' RoPE frequency factors
    (ROTATED_FRACTION of the pairs rotate)."""
    if name != "rope_freqs.weight":
        return None
    full = next(i for i in range(cfg.n_layer) if not is_sliding(cfg, i))
    pairs = head_dim(cfg, full) // 2
    rotated = int(head_dim(cfg, full) * ROTATED_FRACTION / 2)
    return [1.0] * rotated + [UNROTATED_FACTOR] * (pairs - rotated)


def keeps_f32(name: str) -> bool:
    """The MoE router stays F32 in every file type, as llama.cpp's converter and quantizer keep it."""
    return name.endswith("ffn_gate_inp.weight")


def matrix_scale(base: str, shape: tuple[int, ...]) -> float:
    """Std of a matrix (see make_model._scale)."""
    if base == "ffn_gate_inp":
        # Its input has RMS 1/sqrt(n_embd): this std gives router logits of std ~2, so the
        # chosen experts usually stand clear of the rest. Top-k routing is discontinuous: where
        # the k-th and (k+1)-th logits tie to within rounding, two correct implementations (or
        # two kernel levels of one) pick different experts. With std 2, 1 of 6000 routing
        # decisions of the parity prompts was such a tie (2.8e-2 apart on one position).
        return 2.0
    return 1.0 / math.sqrt(shape[-1])


def add_metadata(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """The keys llama.cpp's converter writes for Gemma 4 beyond Gemma 3's."""
    arch = cfg.arch
    w.add_final_logit_softcapping(cfg.final_logit_softcap)
    w.add_shared_kv_layers(cfg.shared_kv_layers)
    w.add_embedding_length_per_layer_input(cfg.n_embd_per_layer)
    w.add_sliding_window_pattern([is_sliding(cfg, i) for i in range(cfg.n_layer)])
    w.add_uint32(f"{arch}.attention.key_length_swa", cfg.head_dim)
    w.add_uint32(f"{arch}.attention.value_length_swa", cfg.head_dim)
    w.add_uint32(f"{arch}.rope.dimension_count", cfg.head_dim_full)
    w.add_uint32(f"{arch}.rope.dimension_count_swa", cfg.head_dim)
    if cfg.n_expert:
        w.add_expert_count(cfg.n_expert)
        w.add_expert_used_count(cfg.n_expert_used)
        w.add_expert_feed_forward_length(cfg.n_ff_exp)
