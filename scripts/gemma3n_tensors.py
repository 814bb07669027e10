"""Gemma 3n layout for the synthetic model writer: tensors, their types and scales, metadata.

Gemma 3n keeps the Gemma 3 attention and feed-forward blocks and adds AltUp (four residual streams
of which one, the active stream, goes through the block), LAuReL (a low-rank residual branch next
to attention) and per-layer inputs (a 256-wide vector for every layer, looked up per token and
projected from the embedding). This module describes that layout the way llama.cpp's converter
writes it; ``make_model`` generates and writes the values.

llama.cpp fixes some Gemma 3n hyper-parameters in code whatever the file says: 4 AltUp streams,
per-layer inputs of width 256, LAuReL rank 64, KV owned by layers 0-19 (later layers reuse the KV
of layer 18 when sliding, 19 when global), activation sparsity in layers 0-9 and a final logit
softcap of 30. The defaults of the config fields below are those values; other values write a
consistent file that llama.cpp cannot load.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import gguf

if TYPE_CHECKING:  # make_model imports this module; the config type is only needed for checkers
    from make_model import ModelConfig

Q = gguf.GGMLQuantizationType

# The converter keeps these small mixing matrices in F32 for every file type (their rows of 4
# values could not be Q8_0 anyway); the 1-D tensors are F32 as well.
ALWAYS_F32 = ("altup_correct_coef", "altup_predict_coef")

# Per-layer activation sparsity: the converter writes the standard normal quantile of the target
# sparsity, computed in float32 by torch: 0.95 gives this value (the constant llama.cpp uses) and
# 0.0 (no sparsity) gives -inf. A reader must treat -inf as "no sparsity", not apply it.
SPARSITY_STD_MUL = 1.6448533535003662

# Weight scales (std of the matrices, gain of the 1-D weights) that keep the forward pass well
# conditioned; see tensor_scale. Unlike Gemma 3, whose residual stream accumulates, the active
# AltUp stream is divided by sqrt(2) in every layer, so each layer rewrites a large part of it and
# any sensitivity compounds over the 20+ layers. These values were chosen so that rounding the
# matrices to Q8_0 moves the logits about as much as it does for the Gemma 3 tiny preset
# (relative L2 error ~3% median, ~5% worst position, top-1 kept at ~96% of positions); with the
# plain 1/sqrt(fan_in) rule and unit gains everywhere it moved them by ~50%.
ROUTER_PRE_TANH_STD = 1.0  # std of the AltUp router output before its tanh: modalities spread
PREDICT_COEF_STD = 0.03  # AltUp prediction: how much each stream mixes the others per layer
CORRECT_COEF_STD = 0.05  # AltUp correction: spread of the innovation gain around 1
# The FFN of the first layers keeps only the top 5% of its gate (activation sparsity): its
# normalized output hangs on a few units near the cutoff and swings with tiny input changes. A
# small gain of post_ffw_norm (in every layer, for uniformity) keeps that from dominating.
FFN_POST_GAIN = 0.25


def layer_is_sliding(cfg: ModelConfig, layer: int) -> bool:
    """Whether a layer attends through the sliding window (the last of every period is global)."""
    return layer % cfg.swa_period < cfg.swa_period - 1


def tensor_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Names and numpy shapes, (out, in) for matrices, of every Gemma 3n tensor in file order.

    The two AltUp projections are 3-D, (n_altup - 1, out, in): one matrix per inactive stream.
    Layers that reuse an earlier layer's KV still carry attn_k / attn_v (llama.cpp requires them).
    """
    e, q_dim, kv_dim = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    a, pl, r = cfg.n_altup, cfg.n_embd_altup, cfg.laurel_rank
    specs = [("token_embd.weight", (cfg.n_vocab, e))]
    if not cfg.tied_embeddings:
        specs.append(("output.weight", (cfg.n_vocab, e)))
    specs += [("per_layer_token_embd.weight", (cfg.n_vocab, pl * cfg.n_layer)),
              ("per_layer_model_proj.weight", (pl * cfg.n_layer, e)),
              ("per_layer_proj_norm.weight", (pl,)),
              ("altup_proj.weight", (a - 1, e, e)),
              ("altup_unembd_proj.weight", (a - 1, e, e)),
              ("output_norm.weight", (e,))]
    block = [("attn_norm", (e,)), ("attn_q", (q_dim, e)), ("attn_k", (kv_dim, e)),
             ("attn_v", (kv_dim, e)), ("attn_q_norm", (cfg.head_dim,)),
             ("attn_k_norm", (cfg.head_dim,)), ("attn_output", (e, q_dim)),
             ("post_attention_norm", (e,)), ("ffn_norm", (e,)), ("ffn_gate", (cfg.n_ff, e)),
             ("ffn_up", (cfg.n_ff, e)), ("ffn_down", (e, cfg.n_ff)), ("post_ffw_norm", (e,)),
             ("inp_gate", (pl, e)), ("proj", (e, pl)), ("post_norm", (e,)),
             ("altup_correct_coef", (a, a)), ("altup_correct_scale", (e,)),
             ("altup_predict_coef", (a * a, a)), ("altup_router", (a, e)),
             ("altup_router_norm", (e,)), ("laurel_l", (r, e)), ("laurel_r", (e, r)),
             ("laurel_post_norm", (e,))]
    for i in range(cfg.n_layer):
        specs += [(f"blk.{i}.{name}.weight", shape) for name, shape in block]
    return specs


def tensor_type(name: str, shape: tuple[int, ...], qtype: Q) -> Q:
    """Storage type of a tensor in a file whose matrices are qtype, as the converter chooses."""
    base = name.removesuffix(".weight").rsplit(".", 1)[-1]
    return Q.F32 if len(shape) == 1 or base in ALWAYS_F32 else qtype


def tensor_scale(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Std of a matrix's values, or gain of a 1-D weight (stored as gain * (1 + noise)).

    Gemma 3n uses its norm weights as stored (the converter adds no +1), so a gain is the scale the
    norm leaves. Matrices default to std 1/sqrt(fan_in), which keeps their input's RMS; the
    exceptions are the tensors whose input arrives with a fixed, non-unit scale in the graph.
    """
    base = name.removesuffix(".weight").rsplit(".", 1)[-1]
    if len(shape) == 1:
        if base == "output_norm":
            return cfg.logit_scale  # the logits' std before the embedding's row spread
        if base in ("attn_q_norm", "attn_k_norm"):
            # Gemma 3n does not scale q.k by 1/sqrt(head_dim); small q/k norm gains do it, so the
            # attention scores have std ~1 as in Gemma 3 instead of sqrt(head_dim).
            return cfg.head_dim ** -0.25
        if base == "post_ffw_norm":
            return FFN_POST_GAIN
        return 1.0
    if base == "per_layer_token_embd":
        # Looked up rows are scaled by sqrt(n_embd_altup): RMS ~1, like the projected half they
        # are averaged with.
        return 1.0 / math.sqrt(cfg.n_embd_altup)
    if base == "altup_router":
        # Its input is RMS-normed, then divided by n_embd; this std undoes that so the router's
        # tanh sees values of std ROUTER_PRE_TANH_STD (modalities neither ~0 nor saturated).
        return ROUTER_PRE_TANH_STD * math.sqrt(cfg.n_embd)
    if base == "altup_predict_coef":
        return PREDICT_COEF_STD
    if base == "altup_correct_coef":
        return CORRECT_COEF_STD
    return 1.0 / math.sqrt(shape[-1])


def add_metadata(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """The keys the converter writes for Gemma 3n beyond those it writes for Gemma 3.

    llama.cpp reads only sliding_window_pattern of these (and feed_forward_length, which may be an
    array for every architecture); the rest it fixes in code, see the module docstring.
    """
    n_shared = max(0, cfg.n_layer - cfg.n_layer_kv)
    w.add_final_logit_softcapping(cfg.final_logit_softcap)
    w.add_altup_active_idx(0)
    w.add_altup_num_inputs(cfg.n_altup)
    w.add_embedding_length_per_layer_input(cfg.n_embd_altup)
    w.add_shared_kv_layers(n_shared)
    w.add_activation_sparsity_scale([SPARSITY_STD_MUL if i < cfg.n_layer_sparse else -math.inf
                                     for i in range(cfg.n_layer)])
    w.add_sliding_window_pattern([layer_is_sliding(cfg, i) for i in range(cfg.n_layer)])
