"""Converted MLX weights on disk, content-addressed, so a GGUF is converted once.

A conversion lives in ``<cache>/<sha256 of the GGUF>-<dtype>/`` as mlx-lm lays out a model:
``config.json`` (mlx-lm's model arguments) and ``model.safetensors`` (mlx-lm's tensor names),
so the folder also loads with ``Engine(folder, backend="mlx")``, which then takes the
tokenizer from the GGUF named in ``config.json``. The cache is ``$PYENGINE_MLX_CACHE`` (``off``
disables it), else ``.mlx-cache`` in the model registry folder, else
``~/.cache/pyengine/mlx``. Entries are written to a temporary folder and renamed, so a crash
never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx

from pyengine.gateway.store import default_registry_dir

# Bumped when the conversion changes, so old entries are not reused. 2: quantized types other
# than Q8_0 stay quantized ("quantized", formerly "q8"); layers of several bit widths.
FORMAT = 2
_OLLAMA_BLOB = re.compile(r"^sha256-([0-9a-f]{64})$")


def cache_dir() -> Path | None:
    """Where conversions are kept, or None when caching is off."""
    env = os.environ.get("PYENGINE_MLX_CACHE", "").strip()
    if env.lower() in ("off", "0", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    registry = default_registry_dir()
    if registry is not None:
        return registry / ".mlx-cache"
    return Path.home() / ".cache" / "pyengine" / "mlx"


def file_digest(path: Path) -> str:
    """SHA-256 of a file; an Ollama blob's name already is its digest."""
    m = _OLLAMA_BLOB.match(path.name)
    if m:
        return m.group(1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_dir(root: Path, digest: str, dtype: str) -> Path:
    return root / f"{digest}-{dtype}-v{FORMAT}"


def load_entry(folder: Path) -> tuple[dict[str, Any], dict[str, mx.array]] | None:
    """(config, weights) of a cached conversion, or None when there is none."""
    config, weights = folder / "config.json", folder / "model.safetensors"
    if not (config.is_file() and weights.is_file()):
        return None
    return json.loads(config.read_text()), mx.load(str(weights))


def store_entry(folder: Path, config: dict[str, Any], weights: dict[str, mx.array]) -> None:
    """Writes a conversion atomically; a concurrent writer of the same entry wins harmlessly."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # already there (another process converted it first)
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
