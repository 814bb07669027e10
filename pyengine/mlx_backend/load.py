"""Loading a model for the MLX backend: a GGUF file (converted, or from the cache) or a folder
in mlx-lm's layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.nn as nn

from pyengine import _core
from pyengine.errors import ModelError
from pyengine.mlx_backend import cache, convert

# The MLX type an unquantized GGUF's matrices map to unless asked otherwise: their own.
_FLOAT_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def default_dtype(path: Path) -> str:
    """The file's own type: "quantized" when any tensor is quantized (Q8_0, Q4_K, ...: they
    stay quantized, see convert.CHOICES), else the float type of its matrices."""
    meta, tensors, _lengths, _info = _core.read_gguf(str(path), 0)
    types = {name: ttype for name, ttype, _shape, _nbytes in tensors}
    if any(t not in _FLOAT_DTYPE for t in types.values()):
        return "quantized"
    arch = meta.get("general.architecture")
    if arch not in _core.architectures():
        return "float32"  # loading it fails, naming the architecture
    matrix = next(s["name"] for s in _core.architecture_tensors(arch)
                  if s["kind"] == "matrix" and s["per_layer"])
    return _FLOAT_DTYPE.get(types.get(f"blk.0.{matrix}", "F32"), "float32")


def load(path: Path, dtype: str | None) -> tuple[_core.ModelFile, nn.Module, str]:
    """(the GGUF's ModelFile for config and tokenizer, the mlx-lm model, its type)."""
    if dtype is not None:
        dtype = convert.canonical_dtype(dtype)
    if path.is_dir():
        return _load_folder(path, dtype)
    mf = _core.ModelFile(str(path))
    dtype = dtype or default_dtype(path)
    args = convert.model_args(mf.config)
    root = cache.cache_dir()
    if root is None:
        return mf, convert.build_model(args, convert.mlx_weights(mf, dtype)), dtype
    digest = cache.file_digest(path)
    folder = cache.entry_dir(root, digest, dtype)
    entry = cache.load_entry(folder)
    if entry is None:
        weights = convert.mlx_weights(mf, dtype)
        config = dict(args, pyengine={"gguf": str(path.resolve()), "sha256": digest,
                                      "dtype": dtype, "format": cache.FORMAT})
        cache.store_entry(folder, config, weights)
    else:
        weights = entry[1]
    return mf, convert.build_model(args, weights), dtype


def _load_folder(folder: Path, dtype: str | None) -> tuple[_core.ModelFile, nn.Module, str]:
    """A folder in mlx-lm's layout (config.json, safetensors) and a GGUF for the tokenizer: the
    one its config names (the cache writes it) or the single ``*.gguf`` inside it.

    A folder this cache wrote is rebuilt with llama.cpp's conventions (see ``convert``); any
    other, such as an mlx-lm conversion of a Hugging Face checkpoint (quantized or not), loads
    through mlx-lm as it is, with mlx-lm's conventions, and keeps its own types.
    """
    config_path = folder / "config.json"
    if not config_path.is_file() or not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder}: an MLX model folder needs config.json and *.safetensors")
    config = json.loads(config_path.read_text())
    gguf = _tokenizer_gguf(folder, config)
    mf = _core.ModelFile(str(gguf))
    if "pyengine" not in config:
        if dtype is not None:
            raise ValueError("dtype applies to GGUF conversions; this folder keeps its types")
        from mlx_lm.utils import load_model

        model, _config = load_model(folder)
        model.eval()
        return mf, model, "mlx-lm"
    entry = cache.load_entry(folder)
    if entry is None:
        raise ModelError(f"{folder}: model.safetensors is missing")
    config, weights = entry
    expected = convert.model_args(mf.config)
    if config.get("model_type") != expected["model_type"]:
        raise ModelError(f"{folder}: model_type {config.get('model_type')!r} does not match "
                         f"the tokenizer's GGUF ({expected['model_type']!r})")
    saved = config.get("pyengine", {}).get("dtype")
    saved = convert.ALIASES.get(saved, saved)
    want = dtype or saved or "float32"
    if want != saved:
        raise ValueError(f"{folder} holds {saved} weights; convert its GGUF for {want}")
    args = {k: v for k, v in config.items() if k != "pyengine"}
    return mf, convert.build_model(args, weights), want


def _tokenizer_gguf(folder: Path, config: dict[str, Any]) -> Path:
    named = config.get("pyengine", {}).get("gguf")
    if named and Path(named).is_file():
        return Path(named)
    found = sorted(folder.glob("*.gguf"))
    if len(found) == 1:
        return found[0]
    raise ModelError(f"{folder}: the tokenizer comes from a GGUF of the same model; put one "
                     "*.gguf in the folder (this engine tokenizes as llama.cpp does)")
