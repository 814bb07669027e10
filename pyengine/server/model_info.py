"""What ``/api/tags``, ``/api/show`` and ``/api/ps`` say about a GGUF file, read from its header."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyengine import _core
from pyengine.gguf_facts import file_type_name

def human_number(n: int) -> str:
    """A parameter count as Ollama prints it: ``1B``, ``7.6B``, ``268.10M``, ``800K``."""
    if n >= 1_000_000_000:
        v = n / 1_000_000_000
        return f"{v:.0f}B" if v == math.floor(v) else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1_000_000
        return f"{v:.0f}M" if v == math.floor(v) else f"{v:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN or infinity; a header may still hold them.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


@dataclass(frozen=True)
class ModelFacts:
    """A model file's size, version stamp and the metadata clients are shown."""

    path: Path
    size: int
    modified_at: datetime
    digest: str
    architecture: str
    parameter_count: int
    file_type: str
    metadata: dict[str, Any]  # scalar keys; arrays are listed in array_lengths
    array_lengths: dict[str, int]

    def details(self) -> dict[str, Any]:
        """Ollama's ``details`` object."""
        return {"parent_model": "", "format": "gguf", "family": self.architecture,
                "families": [self.architecture],
                "parameter_size": human_number(self.parameter_count),
                "quantization_level": self.file_type}

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """The GGUF metadata; arrays (vocabularies) are empty unless ``verbose``, as in Ollama."""
        info = dict(self.metadata)
        info.setdefault("general.parameter_count", self.parameter_count)
        if verbose:
            full, _tensors, _lengths, _info = _core.read_gguf(str(self.path))
            info.update({k: _json_safe(v) for k, v in full.items() if k in self.array_lengths})
        else:
            info.update({k: [] for k in self.array_lengths})
        return dict(sorted(info.items()))


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def model_facts(path: str | os.PathLike[str]) -> ModelFacts:
    """Facts about the GGUF file at ``path`` (re-read only when the file changes)."""
    return _facts(*_stamp(Path(path)))


@functools.lru_cache(maxsize=64)
def _facts(path: str, size: int, mtime_ns: int) -> ModelFacts:
    # Arrays longer than this stay out of the scalar view (vocabularies run to 262k entries).
    meta, tensors, lengths, _info = _core.read_gguf(path, 16)
    # Arrays read_gguf cut short: shown empty unless verbose, as Ollama shows vocabularies.
    arrays = {k: n for k, n in lengths.items()
              if not (isinstance(meta.get(k), list) and len(meta[k]) == n)}
    scalars = {k: _json_safe(v) for k, v in meta.items() if k not in arrays}
    count = meta.get("general.parameter_count")
    if not isinstance(count, int):
        count = 0
        for _name, _ttype, shape, _nbytes in tensors:
            count += math.prod(shape)
    ft = meta.get("general.file_type")
    # The digest names this version of the file (path, size, modification time) without
    # hashing gigabytes on a listing; it changes whenever the file does.
    digest = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()
    return ModelFacts(
        path=Path(path), size=size,
        modified_at=datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc), digest=digest,
        architecture=str(meta.get("general.architecture", "")), parameter_count=int(count),
        file_type=file_type_name(ft),
        metadata=scalars, array_lengths=arrays)
