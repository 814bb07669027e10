#!/usr/bin/env python3
"""Rewrite a llama.cpp-style Gemma 3 / 3n / 4 GGUF into an Ollama-style blob.

Ollama publishes GGUF blobs written by its own converter, whose metadata and tensors differ from
what llama.cpp's converter writes for the same checkpoint; stock Ollama now runs llama.cpp and
patches those differences in memory at load time. The engine reads the blobs unchanged. No such
blob can be downloaded here, so this script makes one from a llama.cpp-style file (a synthetic
one from make_model.py, or the real Gemma 3 270M), one quirk at a time or all of them, so that
tests can check that each quirk leaves the logits, the tokens and the tokenization unchanged.

    python scripts/ollama_style.py IN.gguf -o OUT.gguf                  # every quirk of the arch
    python scripts/ollama_style.py IN.gguf -o OUT.gguf --quirk vision --quirk no-rms-eps
    python scripts/ollama_style.py IN.gguf -o OUT.gguf --like-4b        # 131072 ctx, no scaling keys
    python scripts/ollama_style.py --list

From Python: ``from ollama_style import rewrite; rewrite("in.gguf", "out.gguf", ["vision"])``.

A rewrite never changes what the file means: a quirk whose precondition the input does not meet
(an epsilon other than 1e-6 to drop, a non-zero per-layer row to cut, ...) raises ValueError.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType

# What each quirk does, per architecture (the sources are Ollama's convert/convert_gemma3.go,
# convert/convert_gemma3n.go, convert/tokenizer*.go and its llama.cpp patch llama/compat/).
GEMMA3_QUIRKS = {
    "no-rms-eps": "no attention.layer_norm_rms_epsilon (the multimodal converter wrote none)",
    "nested-rope": "rope.global.freq_base / rope.local.freq_base instead of the flat names",
    "softcap-30": "final_logit_softcapping = 30, which the converter of nested-rope filled in",
    "no-rope-keys": "no rope base keys at all (the 4B/12B/27B converter; bases 1e6 and 1e4)",
    "no-rope-scaling": "no rope.scaling.* keys (needs a context of 131072: see --like-4b)",
    "extra-tokens": "<image_soft_token> listed past token_embd's rows (user-defined, -1000)",
    "token-flags": "tokenizer.ggml.add_padding_token / add_unknown_token (false)",
    "no-space-prefix-key": "no tokenizer.ggml.add_space_prefix",
    "eos-ids": "tokenizer.ggml.eos_token_ids = [eos, <end_of_turn>]",
    "vision": "the vision tower in the file (v.*, mm.* tensors; gemma3.vision.*, gemma3.mm.*)",
}
GEMMA3N_QUIRKS = {
    "per-layer-rows": "per_layer_token_embd without llama.cpp's zero rows for the multimodal ids",
    "tokenizer-model": "tokenizer.ggml.model other than 'llama', byte pieces typed normal",
    "rope-local-key": "rope.freq_base_local instead of rope.freq_base_swa",
    "head-dim-key": "head_dim instead of attention.key_length / value_length",
    "ffn-scalar": "feed_forward_length as one integer instead of a per-layer array",
    "extra-keys": "altup.correct_scale / altup.lr_multiplier",
    "token-flags": GEMMA3_QUIRKS["token-flags"],
    "no-space-prefix-key": GEMMA3_QUIRKS["no-space-prefix-key"],
    "eos-ids": GEMMA3_QUIRKS["eos-ids"],
}
GEMMA4_QUIRKS = {
    "split-experts": "experts' gate and up as two tensors instead of llama.cpp's fused one",
    "expert-scale-name": "the per-expert scale as ffn_gate_inp.per_expert_scale",
    "bpe-as-llama": "tokenizer.ggml.model = 'llama' for the gemma4 BPE vocabulary (merges kept)",
    "multimodal": "audio and vision towers in the file (a.*, v.*, mm.* tensors, all NaN)",
}
QUIRKS = {"gemma3": GEMMA3_QUIRKS, "gemma3n": GEMMA3N_QUIRKS, "gemma4": GEMMA4_QUIRKS}
# "all": every quirk that combines. Ollama's Gemma 3 converter has two paths, and a published
# blob shows one of them: the text-only 1B/270M one (nested rope keys, softcap 30, the extra
# token; it does write the epsilon) and the multimodal 4B/12B/27B one (no epsilon, no rope
# keys, no scaling at a 131072 context, the vision tower), which --like-4b selects. Both write
# the tokenizer flags, no space-prefix key, and (since mid-2025) the eos list.
ALL = {
    "gemma3": [q for q in GEMMA3_QUIRKS if q not in ("no-rope-keys", "no-rope-scaling")],
    "gemma3n": list(GEMMA3N_QUIRKS),
    "gemma4": list(GEMMA4_QUIRKS),
}
ALL_4B = [q for q in GEMMA3_QUIRKS if q not in ("nested-rope", "softcap-30", "extra-tokens")]

OLLAMA_SCALED_CONTEXT = 131072  # Gemma 3 4B/12B/27B: linear RoPE scaling x8 is implied
IMAGE_SOFT_TOKEN = "<image_soft_token>"


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """Shape of the SigLIP tower written by the 'vision' quirk. The defaults are Gemma 3 4B's
    (27 blocks there; 2 here keep the file small). Every value is NaN, so that a reader which
    computed with any of them would show it."""

    width: int = 1152
    ff: int = 4304
    blocks: int = 2
    heads: int = 16
    image: int = 896
    patch: int = 14
    tokens_per_image: int = 256


TINY_VISION = VisionSpec(width=256, ff=1024, blocks=8, heads=4, image=224, patch=14,
                         tokens_per_image=64)


# ------------------------------------------------------------------------------ file in / out

@dataclasses.dataclass
class _Tensor:
    name: str
    data: np.ndarray  # numpy layout; uint8 rows of bytes for quantized types
    qtype: Q


class _Blob:
    """A GGUF file's metadata (ordered, with value types) and tensors, to be edited and written."""

    def __init__(self, path: Path):
        r = gguf.GGUFReader(path)
        self.reader = r  # keeps the tensors' memory maps alive until written
        self.kv: dict[str, tuple[Any, V, V | None]] = {}
        for key, field in r.fields.items():
            if key.startswith("GGUF.") or key == "general.alignment":
                continue
            vtype = V(field.types[0])
            sub = V(field.types[-1]) if vtype == V.ARRAY else None
            self.kv[key] = (field.contents(), vtype, sub)
        self.tensors = [_Tensor(t.name, t.data, Q(t.tensor_type)) for t in r.tensors]
        self.arch = self.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.kv[key][0] if key in self.kv else default

    def set(self, key: str, value: Any, vtype: V, sub: V | None = None) -> None:
        self.kv[key] = (value, vtype, sub)

    def pop(self, key: str) -> Any:
        return self.kv.pop(key)[0] if key in self.kv else None

    def tensor(self, name: str) -> _Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ValueError(f"the file has no tensor {name!r}")

    def write(self, path: Path) -> None:
        w = gguf.GGUFWriter(path, self.arch)
        for key, (value, vtype, sub) in self.kv.items():
            if key == "general.architecture":
                continue  # the writer adds it
            w.add_key_value(key, value, vtype, sub_type=sub)
        for t in self.tensors:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _rows(t: _Tensor) -> np.ndarray:
    """A 2-D tensor's rows as float32 (dequantized)."""
    if t.qtype in (Q.F32, Q.F16):
        return np.asarray(t.data, dtype=np.float32)
    return gguf.quants.dequantize(t.data, t.qtype)


# ----------------------------------------------------------------------------------- quirks

def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def _no_rms_eps(b: _Blob) -> None:
    eps = b.pop("gemma3.attention.layer_norm_rms_epsilon")
    _need(eps is None or abs(eps - 1e-6) <= 1e-12,
          f"no-rms-eps: the model's epsilon is {eps}, not the 1e-6 a reader assumes")


def _nested_rope(b: _Blob) -> None:
    base, swa = b.pop("gemma3.rope.freq_base"), b.pop("gemma3.rope.freq_base_swa")
    b.set("gemma3.rope.global.freq_base", 1e6 if base is None else base, V.FLOAT32)
    b.set("gemma3.rope.local.freq_base", 1e4 if swa is None else swa, V.FLOAT32)


def _no_rope_keys(b: _Blob) -> None:
    base, swa = b.pop("gemma3.rope.freq_base"), b.pop("gemma3.rope.freq_base_swa")
    _need(base in (None, 1e6) and swa in (None, 1e4),
          f"no-rope-keys: the bases are {base} and {swa}, not the 1e6 and 1e4 a reader assumes")


def _softcap_30(b: _Blob) -> None:
    _need("gemma3.final_logit_softcapping" not in b.kv,
          "softcap-30: the model has a final softcap of its own")
    b.set("gemma3.final_logit_softcapping", 30.0, V.FLOAT32)


def _no_rope_scaling(b: _Blob) -> None:
    kind = b.pop("gemma3.rope.scaling.type")
    factor = b.pop("gemma3.rope.scaling.factor")
    if kind is None and factor is None:
        _need(b.get("gemma3.context_length") < OLLAMA_SCALED_CONTEXT,
              "no-rope-scaling: an unscaled model with a context of 131072 would read as "
              "scaled by 8")
        return
    _need(kind == "linear" and factor == 8.0 and
          b.get("gemma3.context_length") >= OLLAMA_SCALED_CONTEXT,
          f"no-rope-scaling: only linear x8 scaling at a context of {OLLAMA_SCALED_CONTEXT} is "
          f"implied by an Ollama blob (this file: {kind} x{factor}, context "
          f"{b.get('gemma3.context_length')}; see --like-4b)")


def _extra_tokens(b: _Blob) -> None:
    tokens = list(b.get("tokenizer.ggml.tokens"))
    _need(IMAGE_SOFT_TOKEN not in tokens, "extra-tokens: the vocabulary has <image_soft_token>")
    b.set("tokenizer.ggml.tokens", tokens + [IMAGE_SOFT_TOKEN], V.ARRAY, V.STRING)
    b.set("tokenizer.ggml.scores", list(b.get("tokenizer.ggml.scores")) + [-1000.0],
          V.ARRAY, V.FLOAT32)
    b.set("tokenizer.ggml.token_type", list(b.get("tokenizer.ggml.token_type"))
          + [int(gguf.TokenType.USER_DEFINED)], V.ARRAY, V.INT32)


def _token_flags(b: _Blob) -> None:
    # Ollama's converter writes add_<kind>_token for every special token it finds.
    b.set("tokenizer.ggml.add_padding_token", False, V.BOOL)
    b.set("tokenizer.ggml.add_unknown_token", False, V.BOOL)


def _no_space_prefix_key(b: _Blob) -> None:
    prefix = b.pop("tokenizer.ggml.add_space_prefix")
    _need(prefix is None or prefix is False,
          "no-space-prefix-key: the tokenizer adds a space prefix, which a Gemma reader without "
          "the key does not")


def _eos_ids(b: _Blob) -> None:
    tokens = list(b.get("tokenizer.ggml.tokens"))
    _need("<end_of_turn>" in tokens, "eos-ids: the vocabulary has no <end_of_turn>")
    ids = [int(b.get("tokenizer.ggml.eos_token_id", 1)), tokens.index("<end_of_turn>")]
    b.set("tokenizer.ggml.eos_token_ids", ids, V.ARRAY, V.INT32)


def _vision(b: _Blob, spec: VisionSpec) -> None:
    _need(not any(t.name.startswith(("v.", "mm.")) for t in b.tensors),
          "vision: the file already has vision tensors")
    n_embd = int(b.get("gemma3.embedding_length"))
    w, ff, n_pos = spec.width, spec.ff, (spec.image // spec.patch) ** 2

    def nan(name: str, shape: tuple[int, ...]) -> _Tensor:
        # 1-D weights are F32, matrices F16, as in Ollama's Gemma 3 blobs.
        dtype, qtype = (np.float32, Q.F32) if len(shape) == 1 else (np.float16, Q.F16)
        return _Tensor(name, np.full(shape, np.nan, dtype=dtype), qtype)

    specs: list[tuple[str, tuple[int, ...]]] = [
        ("v.patch_embedding.weight", (w, 3, spec.patch, spec.patch)),
        ("v.patch_embedding.bias", (w,)),
        ("v.position_embedding.weight", (n_pos, w)),
    ]
    for i in range(spec.blocks):
        p = f"v.blk.{i}."
        specs += [(p + "layer_norm1.weight", (w,)), (p + "layer_norm1.bias", (w,))]
        for m in ("attn_q", "attn_k", "attn_v", "attn_output"):  # the tower's (check_tensor_names)
            specs += [(p + m + ".weight", (w, w)), (p + m + ".bias", (w,))]
        specs += [(p + "layer_norm2.weight", (w,)), (p + "layer_norm2.bias", (w,)),
                  (p + "mlp.fc1.weight", (ff, w)), (p + "mlp.fc1.bias", (ff,)),
                  (p + "mlp.fc2.weight", (w, ff)), (p + "mlp.fc2.bias", (w,))]
    specs += [("v.post_layernorm.weight", (w,)), ("v.post_layernorm.bias", (w,)),
              ("mm.mm_input_projection.weight", (w, n_embd)),
              ("mm.mm_soft_emb_norm.weight", (w,))]
    b.tensors += [nan(name, shape) for name, shape in specs]
    u32 = V.UINT32
    for key, value in [("block_count", spec.blocks), ("embedding_length", w),
                       ("feed_forward_length", ff), ("image_size", spec.image),
                       ("patch_size", spec.patch), ("num_channels", 3),
                       ("attention.head_count", spec.heads)]:
        b.set(f"gemma3.vision.{key}", value, u32)
    b.set("gemma3.vision.attention.layer_norm_epsilon", 1e-6, V.FLOAT32)
    b.set("gemma3.mm.tokens_per_image", spec.tokens_per_image, u32)


def _per_layer_rows(b: _Blob) -> None:
    from pyengine import _core

    t = b.tensor(next(s["name"] for s in _core.architecture_tensors("gemma3n")
                      if s["ne"][-1] == "n_vocab_per_layer"))
    rows = _rows(t)
    nonzero = np.flatnonzero(np.any(rows != 0, axis=1))
    keep = int(nonzero[-1]) + 1 if nonzero.size else 0
    _need(keep < len(rows), "per-layer-rows: per_layer_token_embd has no zero rows at its end "
          "(write the model with n_vocab_per_layer, as llama.cpp pads the multimodal ids)")
    t.data = t.data[:keep]


def _tokenizer_model(b: _Blob, name: str) -> None:
    _need(name != "llama", "tokenizer-model: the name must differ from 'llama'")
    b.set("tokenizer.ggml.model", name, V.STRING)
    byte, normal = int(gguf.TokenType.BYTE), int(gguf.TokenType.NORMAL)
    types = [normal if int(t) == byte else int(t) for t in b.get("tokenizer.ggml.token_type")]
    b.set("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)


def _moe_specs() -> dict[str, list[str]]:
    """Gemma 4's expert tensor names by role, from the native core's table."""
    from pyengine import _core

    moe = [s for s in _core.architecture_tensors("gemma4") if s["only"] == "moe"]
    return {
        "fused": [s["name"] for s in moe if "n_ff_exp_2" in s["ne"]],
        "split": [s["name"] for s in moe if s["ne"] == ["n_embd", "n_ff_exp", "n_expert"]],
        "scale": [s["name"] for s in moe if s["ne"] == ["n_expert"]],  # llama.cpp's, Ollama's
    }


def _split_experts(b: _Blob) -> None:
    names = _moe_specs()
    fused = [t for t in b.tensors if t.name.endswith("." + names["fused"][0])]
    _need(bool(fused), "split-experts: the file has no fused expert gate/up tensors")
    for t in fused:
        prefix = t.name[: -len(names["fused"][0])]
        half = t.data.shape[1] // 2  # [experts, 2 * n_ff_exp, row]: gate rows first
        i = b.tensors.index(t)
        b.tensors[i:i + 1] = [_Tensor(prefix + names["split"][0], t.data[:, :half].copy(), t.qtype),
                              _Tensor(prefix + names["split"][1], t.data[:, half:].copy(), t.qtype)]


def _expert_scale_name(b: _Blob) -> None:
    ours, theirs = _moe_specs()["scale"]
    renamed = [t for t in b.tensors if t.name.endswith("." + ours)]
    _need(bool(renamed), "expert-scale-name: the file has no per-expert scales")
    for t in renamed:
        t.name = t.name[: -len(ours)] + theirs


def _bpe_as_llama(b: _Blob) -> None:
    _need(b.get("tokenizer.ggml.model") == "gemma4" and "tokenizer.ggml.merges" in b.kv,
          "bpe-as-llama: the file has no gemma4 BPE vocabulary")
    b.set("tokenizer.ggml.model", "llama", V.STRING)


def _multimodal(b: _Blob) -> None:
    _need(not any(t.name.startswith(("a.", "v.", "mm.")) for t in b.tensors),
          "multimodal: the file already has audio or vision tensors")
    nan = lambda name, shape: _Tensor(name, np.full(shape, np.nan, dtype=np.float16), Q.F16)
    b.tensors += [nan("a.conv1d.0.weight", (64, 3, 3)), nan("a.blk.0.attn_q.weight", (64, 64)),
                  nan("v.patch_embd.weight", (64, 3, 16, 16)), nan("v.blk.0.attn_q.weight", (64, 64)),
                  nan("mm.input_projection.weight", (b.get("gemma4.embedding_length"), 64)),
                  nan("mm.a.input_projection.weight", (b.get("gemma4.embedding_length"), 64))]
    b.set("gemma4.vision.block_count", 1, V.UINT32)
    b.set("gemma4.audio.block_count", 1, V.UINT32)


def _rope_local_key(b: _Blob) -> None:
    swa = b.pop("gemma3n.rope.freq_base_swa")
    b.set("gemma3n.rope.freq_base_local", 1e4 if swa is None else swa, V.FLOAT32)


def _head_dim_key(b: _Blob) -> None:
    k, v = b.pop("gemma3n.attention.key_length"), b.pop("gemma3n.attention.value_length")
    _need(k is not None and (v is None or v == k), "head-dim-key: no single head dimension")
    b.set("gemma3n.head_dim", int(k), V.UINT32)


def _ffn_scalar(b: _Blob) -> None:
    ff = b.get("gemma3n.feed_forward_length")
    values = list(ff) if isinstance(ff, (list, tuple)) else [ff]
    _need(len(set(values)) == 1, "ffn-scalar: the layers' feed-forward widths differ")
    b.set("gemma3n.feed_forward_length", int(values[0]), V.UINT32)


def _extra_keys(b: _Blob) -> None:
    b.set("gemma3n.altup.correct_scale", True, V.BOOL)
    b.set("gemma3n.altup.lr_multiplier", 1.0, V.FLOAT32)


# Applied in this order whatever order they are asked for.
_ORDER = ["no-rms-eps", "nested-rope", "softcap-30", "no-rope-keys", "no-rope-scaling",
          "extra-tokens",
          "token-flags", "no-space-prefix-key", "eos-ids", "vision", "per-layer-rows",
          "tokenizer-model", "rope-local-key", "head-dim-key", "ffn-scalar", "extra-keys",
          "split-experts", "expert-scale-name", "bpe-as-llama", "multimodal"]


def rewrite(src: str | Path, dst: str | Path, quirks: Iterable[str] = ("all",),
            like_4b: bool = False, vision: VisionSpec = VisionSpec(),
            tokenizer_model: str = "gemma3n") -> dict[str, Any]:
    """Write dst: src with the given Ollama quirks ("all": every quirk that combines).

    like_4b: a Gemma 3 file with explicit linear x8 RoPE scaling gets a context of 131072 and no
    scaling keys, as Ollama's blobs of Gemma 3 4B/12B/27B ("all" is then their converter's
    quirks). Returns a summary: the quirks applied, and for 'vision' the byte range
    [start, end) of the vision tensors' data in dst.
    """
    src, dst = Path(src), Path(dst)
    b = _Blob(src)
    if b.arch not in QUIRKS:
        raise ValueError(f"{src}: architecture {b.arch!r} (this script rewrites "
                         f"{', '.join(QUIRKS)})")
    known = QUIRKS[b.arch]
    asked = set(quirks)
    if "all" in asked:
        asked = (asked - {"all"}) | set(ALL_4B if like_4b else ALL[b.arch])
    unknown = asked - set(known)
    if unknown:
        raise ValueError(f"{b.arch} has no quirk {sorted(unknown)} (it has {sorted(known)})")
    if like_4b:
        _need(b.arch == "gemma3", "--like-4b: only Gemma 3 has the 131072-context models")
        _need(b.get("gemma3.rope.scaling.type") == "linear" and
              b.get("gemma3.rope.scaling.factor") == 8.0,
              "--like-4b: the input must scale RoPE linearly by 8 (make_model.py "
              "--set rope_scaling_factor=8), as the 4B does")
        b.set("gemma3.context_length", OLLAMA_SCALED_CONTEXT, V.UINT32)
        asked.add("no-rope-scaling")
    steps = {
        "no-rms-eps": _no_rms_eps, "nested-rope": _nested_rope, "softcap-30": _softcap_30,
        "no-rope-keys": _no_rope_keys,
        "no-rope-scaling": _no_rope_scaling, "extra-tokens": _extra_tokens,
        "token-flags": _token_flags, "no-space-prefix-key": _no_space_prefix_key,
        "eos-ids": _eos_ids, "vision": lambda blob: _vision(blob, vision),
        "per-layer-rows": _per_layer_rows,
        "tokenizer-model": lambda blob: _tokenizer_model(blob, tokenizer_model),
        "rope-local-key": _rope_local_key, "head-dim-key": _head_dim_key,
        "ffn-scalar": _ffn_scalar, "extra-keys": _extra_keys,
        "split-experts": _split_experts, "expert-scale-name": _expert_scale_name,
        "bpe-as-llama": _bpe_as_llama, "multimodal": _multimodal,
    }
    applied = [q for q in _ORDER if q in asked]
    for q in applied:
        steps[q](b)
    b.write(dst)
    summary: dict[str, Any] = {"arch": b.arch, "quirks": applied}
    if "vision" in applied:
        summary["vision_range"] = _vision_range(dst)
    return summary


def _vision_range(path: Path) -> tuple[int, int]:
    """[start, end) in the file of the vision tensors' data (written last, so contiguous)."""
    r = gguf.GGUFReader(path)
    spans = [(int(t.data_offset), int(t.data_offset) + int(t.n_bytes))
             for t in r.tensors if t.name.startswith(("v.", "mm."))]
    del r
    return min(s for s, _ in spans), max(e for _, e in spans)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?")
    ap.add_argument("-o", "--output")
    ap.add_argument("--quirk", action="append", default=None, metavar="NAME",
                    help="apply this quirk (repeatable; default 'all': every one that combines)")
    ap.add_argument("--like-4b", action="store_true",
                    help="context 131072 and no rope scaling keys (input: linear x8 scaling)")
    ap.add_argument("--tokenizer-model", default="gemma3n",
                    help="gemma3n 'tokenizer-model' quirk: the name to write (default gemma3n)")
    ap.add_argument("--vision-blocks", type=int, default=None,
                    help="SigLIP blocks of the 'vision' quirk (default 2; 4B has 27)")
    ap.add_argument("--tiny-vision", action="store_true",
                    help="a small vision tower (width 256) for tiny synthetic models")
    ap.add_argument("--list", action="store_true", help="list the quirks and exit")
    args = ap.parse_args()
    if args.list:
        for arch, quirks in QUIRKS.items():
            print(arch)
            for name, what in quirks.items():
                print(f"  {name:<22}{what}")
        return
    if not args.input or not args.output:
        ap.error("INPUT and -o OUTPUT are required")
    spec = TINY_VISION if args.tiny_vision else VisionSpec()
    if args.vision_blocks is not None:
        spec = dataclasses.replace(spec, blocks=args.vision_blocks)
    summary = rewrite(args.input, args.output, args.quirk or ["all"], like_4b=args.like_4b,
                      vision=spec, tokenizer_model=args.tokenizer_model)
    print(f"wrote {args.output}: {summary['arch']}, quirks {', '.join(summary['quirks'])}")


if __name__ == "__main__":
    main()
