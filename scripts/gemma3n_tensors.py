"""Gemma 3n for the synthetic model writer: its metadata and the constants its weights' scales use.

Gemma 3n keeps the Gemma 3 attention and feed-forward blocks and adds AltUp (four residual streams
of which one, the active stream, goes through the block), LAuReL (a low-rank residual branch next
to attention) and per-layer inputs (a 256-wide vector for every layer, looked up per token and
projected from the embedding). Its tensors are declared once, in the native core's architecture
table (``_core.architecture_tensors``); ``make_model`` writes them, and this module the keys
llama.cpp's converter writes beyond Gemma 3's.

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


# Per-layer activation sparsity: the converter writes the standard normal quantile of the target
# sparsity, computed in float32 by torch: 0.95 gives this value (the constant llama.cpp uses) and
# 0.0 (no sparsity) gives -inf. A reader must treat -inf as "no sparsity", not apply it.
SPARSITY_STD_MUL = 1.6448533535003662

# Weight scales (std of the matrices, gain of the 1-D weights) that keep the forward pass well
# conditioned; see make_model._scale. Unlike Gemma 3, whose residual stream accumulates, the active
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
