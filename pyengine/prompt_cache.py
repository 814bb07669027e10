"""Where an engine keeps its prompt cache on disk: one folder per model file and KV-cache type.

The native core writes and checks the block files (header, checksum, disk budget); this module
names the folder. The model file is identified by its digest: an Ollama blob's own name
(``sha256-<hex>``, which Ollama verified), else a SHA-256 of the file's size, its first and
last MiB and 64 KiB samples every 1/64 of it: cheap at start-up even for a 15 GB file, and a
different or rewritten file gets another folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})$")
_SAMPLES = 64
_SAMPLE_BYTES = 64 << 10
_EDGE_BYTES = 1 << 20


def model_digest(path: str | os.PathLike[str]) -> str:
    """A hex digest naming the model file at ``path`` (see the module docstring)."""
    p = Path(path)
    if m := _BLOB.search(p.name):
        return m.group(1)
    size = p.stat().st_size
    h = hashlib.sha256(f"pyengine-model {size}\n".encode())
    with open(p, "rb") as f:
        h.update(f.read(_EDGE_BYTES))
        for i in range(1, _SAMPLES):
            f.seek(size * i // _SAMPLES)
            h.update(f.read(_SAMPLE_BYTES))
        f.seek(max(0, size - _EDGE_BYTES))
        h.update(f.read(_EDGE_BYTES))
    return h.hexdigest()


def cache_folder(root: str | os.PathLike[str], digest: str, kv_type: str) -> Path:
    """The folder under ``root`` for the blocks of the model whose ``model_digest`` is
    ``digest``, for its KV cache of type ``kv_type``."""
    return Path(root) / f"{digest[:32]}-{kv_type}"
