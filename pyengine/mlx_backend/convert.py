"""GGUF Gemma weights as the mlx-lm model classes expect them.

One GGUF file serves both backends: its tensors are renamed to mlx-lm's (Hugging Face) names,
dequantized to the requested float type, and adjusted where the two formats disagree:

- Gemma 3 norm weights are stored with the +1 folded in (llama.cpp's converter adds it); mlx-lm
  computes ``1 + w``, so 1 is subtracted here. Gemma 3n's norms are used as stored by both.
- mlx-lm scales Gemma 3 embeddings by sqrt(n_embd) rounded to bfloat16 (11.3125 for 128 where
  llama.cpp uses 11.3137); the model below hands it embeddings pre-multiplied by the ratio, so
  the product is llama.cpp's. mlx-lm's Gemma 3 has no final soft-cap; it is applied here when
  the file has one.
- mlx-lm's Gaussian top-k sparsity (Gemma 3n) uses the population standard deviation; llama.cpp
  and the reference use n - 1. The std multiplier is rescaled so the cut-off is llama.cpp's.

With ``dtype="quantized"`` the quantized matrices stay quantized: every GGUF type that MLX's
affine quantization expresses exactly becomes an MLX quantized matrix holding the file's values
(see ``quant``); Q6_K and Q2_K, which it cannot express, are re-quantized to MLX 8-bit.

Converted weights are cached on disk, content-addressed by the GGUF's SHA-256 (see ``cache``).
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import gemma3_text, gemma3n

from pyengine import _core
from pyengine.errors import ModelError
from pyengine.mlx_backend import quant

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# "quantized": quantized matrices become MLX quantized matrices (exactly the file's values where
# ``quant.EXACT`` has the type, re-quantized to 8 bits where ``quant.REQUANTIZED`` has it).
# Scales, biases and every other tensor are float32: the exact forms need float32 arithmetic
# (in float16, d * (q + 128) - 128 d would round).
CHOICES = (*DTYPES, "quantized")
# Earlier names of a choice, still accepted: "q8" converted Q8_0 files only, as "quantized" does.
ALIASES = {"q8": "quantized"}
_CORE_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}

# llama.cpp fixes these Gemma 3n widths and counts in code (the native core checks them too).
G3N_STREAMS, G3N_PER_LAYER, G3N_LAUREL_RANK, G3N_SPARSE_LAYERS = 4, 256, 64, 10
G3N_SPARSITY = 0.95  # the target sparsity whose normal quantile llama.cpp hard-codes



def mlx_names(arch: str, n_layer: int) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """GGUF tensor name -> (its entry in the architecture's table, mlx-lm's names for it: one,
    or one per outer slice of a 3-D tensor)."""
    places = {}
    for spec in _core.architecture_tensors(arch):
        outer = spec["ne"][-1] if len(spec["ne"]) == 3 else None
        for layer in range(n_layer) if spec["per_layer"] else [None]:
            name = spec["name"] if layer is None else f"blk.{layer}.{spec['name']}"
            hf = spec["hf"].replace("{l}", str(layer))
            if not hf:
                targets = []
            elif outer is not None:  # one matrix per inactive AltUp stream
                targets = [hf.replace("{k}", str(k)) for k in range(G3N_STREAMS - 1)]
                assert outer == "altup_streams_less_1", outer
            else:
                targets = [hf]
            places[name] = (spec, targets)
    return places


def swa_period(layer_is_swa: list[bool]) -> int:
    """The period p of a sliding/global pattern where layer i is global iff i % p == p - 1.

    mlx-lm's Gemma 3 takes only such a period; a file whose own pattern is not periodic this
    way cannot be expressed and is refused.
    """
    n = len(layer_is_swa)
    for p in range(1, n + 1):
        if all(layer_is_swa[i] == (i % p != p - 1) for i in range(n)):
            return p
    if all(layer_is_swa):
        return n + 1  # no global layer within the model
    raise ModelError("the file's sliding-window pattern is not periodic; mlx-lm's Gemma 3 "
                     "cannot express it")


def model_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's model arguments (its config.json) for a core config dict."""
    common = {
        "hidden_size": cfg["n_embd"], "num_hidden_layers": cfg["n_layer"],
        "intermediate_size": cfg["n_ff"], "num_attention_heads": cfg["n_head"],
        "head_dim": cfg["head_dim"], "rms_norm_eps": cfg["rms_eps"],
        "vocab_size": cfg["n_vocab"], "num_key_value_heads": cfg["n_head_kv"],
        "rope_theta": cfg["rope_base"], "rope_local_base_freq": cfg["rope_base_swa"],
        "sliding_window": cfg["sliding_window"], "max_position_embeddings": cfg["n_ctx_train"],
    }
    if cfg["arch"] == "gemma3":
        scaling = None
        if cfg["rope_scale"] != 1.0:
            scaling = {"rope_type": "linear", "factor": 1.0 / cfg["rope_scale"]}
        return {"model_type": "gemma3_text", **common,
                "query_pre_attn_scalar": cfg["attn_scale"] ** -2,
                "sliding_window_pattern": swa_period(cfg["layer_is_swa"]),
                "rope_scaling": scaling,
                "final_logit_softcapping": cfg["final_softcap"] or None}
    if cfg["arch"] == "gemma3n":
        n = cfg["n_layer"]
        shared = sum(1 for i, src in enumerate(cfg["kv_layer"]) if src != i)
        text = {"model_type": "gemma3n_text", **common,
                "num_kv_shared_layers": shared, "vocab_size_per_layer_input": cfg["n_vocab"],
                "final_logit_softcapping": cfg["final_softcap"],
                "layer_types": ["sliding_attention" if s else "full_attention"
                                for s in cfg["layer_is_swa"]],
                "activation_sparsity_pattern": [G3N_SPARSITY if i < G3N_SPARSE_LAYERS else 0.0
                                                for i in range(n)],
                "hidden_size_per_layer_input": G3N_PER_LAYER, "altup_num_inputs": G3N_STREAMS,
                "altup_coef_clip": None, "altup_correct_scale": True, "altup_active_idx": 0,
                "laurel_rank": G3N_LAUREL_RANK}
        return {"model_type": "gemma3n", "text_config": text}
    raise ModelError(f"the MLX backend runs gemma3 and gemma3n, not {cfg['arch']!r}")


def canonical_dtype(dtype: str) -> str:
    """The CHOICES name of ``dtype`` (an alias's current name); ValueError when unknown."""
    dtype = ALIASES.get(dtype, dtype)
    if dtype not in CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(CHOICES)}, got {dtype!r}")
    return dtype


def mlx_weights(mf: _core.ModelFile, dtype: str) -> dict[str, mx.array]:
    """Every tensor of the file under mlx-lm's name, as an MLX array of ``dtype`` (see CHOICES;
    with "quantized", a quantized matrix becomes three arrays: its packed weight, scales and
    biases)."""
    cfg = mf.config
    arch = cfg["arch"]
    quantize = canonical_dtype(dtype) == "quantized"
    dtype = "float32" if quantize else dtype
    types = mf.tensor_types
    out: dict[str, mx.array] = {}
    places = mlx_names(arch, cfg["n_layer"])
    for name in mf.tensor_names:
        if name.startswith(("v.", "mm.")):
            continue  # the vision tower Ollama's Gemma 3 blobs carry: never read by text models
        spec, targets = places.get(name, (None, []))
        if not targets:
            tied = " (mlx-lm ties its output to the embeddings)" \
                if spec and spec["optional"] else ""
            raise ModelError(f"tensor {name!r} has no place in mlx-lm's {arch} model{tied}")
        plus_one = spec["plus_one"]
        # Ollama's Gemma 3n blobs stop the per-layer table at the text vocabulary; the ids past
        # it (image/audio tokens) get zero rows, as in llama.cpp's files and the native core.
        # (mlx-lm would look row 0 up for them instead.)
        pad = cfg["n_vocab"] if spec["ne"][-1] == "n_vocab_per_layer" else 0
        if quantize and not plus_one and types[name] in quant.EXACT:
            ttype, raw = mf.tensor_raw(name)
            p = quant.to_mlx(ttype, raw)
            # Zero weights, scales and biases: the padded rows dequantize to zero.
            p = p._replace(weight=_pad_rows(p.weight, pad), scales=_pad_rows(p.scales, pad),
                           biases=_pad_rows(p.biases, pad))
            _add_quantized(out, targets, p)
            continue
        if quantize and not plus_one and types[name] in quant.REQUANTIZED:
            _add_requantized(out, targets, _pad_rows(mf.tensor(name, "f32"), pad),
                             quant.REQUANTIZED[types[name]])
            continue
        values = _pad_rows(mf.tensor(name, "f32" if plus_one else _CORE_DTYPE[dtype]), pad)
        if plus_one:
            values = (values - np.float32(1.0))
        arrays = [values] if len(targets) == 1 else list(values)
        for target, a in zip(targets, arrays):
            out[target] = _to_mx(a, dtype)
    return out


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """a [r, ...] with zero rows appended up to `rows` (unchanged when it has as many)."""
    if a.shape[0] >= rows:
        return a
    return np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), dtype=a.dtype)])


def _split(a: np.ndarray, n: int) -> list[np.ndarray]:
    """A tensor's rows as n equal stacked matrices ([n * rows, ...] -> n x [rows, ...])."""
    return list(a.reshape(n, a.shape[0] // n, *a.shape[1:])) if n > 1 else [a]


def _add_quantized(out: dict[str, mx.array], targets: list[str], p: quant.Packed) -> None:
    """One matrix already in MLX's layout (``quant.to_mlx``), or several stacked ones."""
    n = len(targets)
    for target, w, s, b in zip(targets, _split(p.weight, n), _split(p.scales, n),
                               _split(p.biases, n)):
        base = target.removesuffix(".weight")
        out[target] = mx.array(w)
        out[base + ".scales"] = mx.array(s)
        out[base + ".biases"] = mx.array(b)


def _add_requantized(out: dict[str, mx.array], targets: list[str], values: np.ndarray,
                     bits: int) -> None:
    """Float32 values [..., rows, cols] quantized by MLX's own (min-max) affine quantizer."""
    arrays = [values] if len(targets) == 1 else list(values)
    for target, a in zip(targets, arrays):
        base = target.removesuffix(".weight")
        w, s, b = mx.quantize(mx.array(a), group_size=quant.REQUANT_GROUP, bits=bits)
        out[target], out[base + ".scales"], out[base + ".biases"] = w, s, b


def _to_mx(a: np.ndarray, dtype: str) -> mx.array:
    if a.dtype == np.uint16:  # bfloat16 bit patterns
        return mx.array(a).view(mx.bfloat16)
    return mx.array(a).astype(DTYPES[dtype])


class _Capture(nn.Module):
    """Wraps the final norm and keeps its last output: the hidden state embeddings pool."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.last: mx.array | None = None

    def __call__(self, x: mx.array) -> mx.array:
        y = self.inner(x)
        self.last = y
        return y


class Gemma3(gemma3_text.Model):
    """mlx-lm's Gemma 3 with llama.cpp's embedding scale and the file's final soft-cap."""

    def __init__(self, args: gemma3_text.ModelArgs, softcap: float | None) -> None:
        super().__init__(args)
        e = args.hidden_size
        # mlx-lm multiplies by sqrt(n_embd) rounded to bfloat16; pre-multiplying by this ratio
        # makes the product sqrt(n_embd).
        self._embd_fix = math.sqrt(e) / float(mx.array(e ** 0.5, mx.bfloat16).astype(mx.float32))
        self._softcap = softcap

    def __call__(self, inputs: mx.array, cache: Any = None,
                 input_embeddings: mx.array | None = None) -> mx.array:
        if input_embeddings is None:
            input_embeddings = self.model.embed_tokens(inputs) * self._embd_fix
        out = super().__call__(inputs, cache, input_embeddings)
        if self._softcap:
            out = mx.tanh(out / self._softcap) * self._softcap
        return out

class Gemma3n(gemma3n.Model):
    """mlx-lm's Gemma 3n with llama.cpp's sparsity cut-off (sample standard deviation)."""

    def __init__(self, args: gemma3n.ModelArgs) -> None:
        super().__init__(args)
        n_ff = args.text_config["intermediate_size"]
        # mx.std divides by n, llama.cpp by n - 1: scale the multiplier by sqrt(n / (n - 1)).
        fix = math.sqrt(n_ff / (n_ff - 1))
        for layer in self.layers:
            if layer.mlp.activation_sparsity > 0:
                layer.mlp._std_multiplier = layer.mlp._std_multiplier * fix
                # Evaluated here: a lazy array made on this thread cannot be computed on the
                # scheduler's (MLX streams are per thread).
                mx.eval(layer.mlp._std_multiplier)

def build_model(args: dict[str, Any], weights: dict[str, mx.array]) -> nn.Module:
    """An mlx-lm model of ``args`` (see ``model_args``) holding ``weights``; evaluated. Layers
    whose weights come with scales (the "quantized" conversion) become quantized layers, each
    with the bits and group size its arrays' shapes imply."""
    if args["model_type"] == "gemma3_text":
        model: nn.Module = Gemma3(gemma3_text.ModelArgs.from_dict(args),
                                  args.get("final_logit_softcapping"))
        if "lm_head.weight" not in weights:
            model.tie_word_embeddings = True
            model.pop("lm_head")
    else:
        model = Gemma3n(gemma3n.ModelArgs.from_dict(args))
    if any(k.endswith(".scales") for k in weights):
        nn.quantize(model, class_predicate=lambda path, m: _layout(path, m, weights))
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def _layout(path: str, module: nn.Module, weights: dict[str, mx.array]) -> dict[str, Any] | bool:
    """``nn.quantize``'s parameters for the layer at ``path``, or False to keep it as it is.

    Layers differ (a Q4_K_M file mixes 4, 5 and 8 bits), and the arrays tell: a row of ``cols``
    values packs into cols * bits / 32 words and has cols / group_size scales.
    """
    scales = weights.get(f"{path}.scales")
    if scales is None:
        return False
    cols = module.weight.shape[-1]
    return {"group_size": cols // scales.shape[-1],
            "bits": weights[f"{path}.weight"].shape[-1] * 32 // cols}


# Where mlx-lm's Gemma models keep their final norm: Gemma 3 text, Gemma 3 (multimodal
# checkpoint), Gemma 3n.
_FINAL_NORM_PARENTS = (("model",), ("language_model", "model"), ("model", "language_model"))


def capture_final_norm(model: nn.Module) -> _Capture:
    """Wraps the model's final norm (once) so embeddings can pool its output."""
    for path in _FINAL_NORM_PARENTS:
        parent: Any = model
        for name in path:
            parent = getattr(parent, name, None)
            if parent is None:
                break
        norm = getattr(parent, "norm", None) if parent is not None else None
        if isinstance(norm, _Capture):
            return norm
        if isinstance(norm, nn.Module):
            parent.norm = _Capture(norm)
            return parent.norm
    raise ModelError("this MLX model has no final norm where Gemma models keep it")
