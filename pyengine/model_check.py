"""Whether this engine can run a model file, decided from its metadata alone (no tensor data
is read): what ``pyengine show`` reports and what a server checks of its models at start."""

from __future__ import annotations

import os
from typing import Any

from pyengine import _core
from pyengine.errors import PyEngineError

# The vision tower Ollama's Gemma 3 blobs carry in the same file (and the audio tower of its
# Gemma 4 blobs): never read by the text model.
VISION_PREFIXES = ("v.", "mm.", "a.")


def support_reason(arch: str, tensors: list, config_error: str | None) -> str | None:
    """Why a file of architecture ``arch`` with ``tensors`` (``read_gguf``'s list) cannot run
    here: the architecture, the config error that stops it, or the first text-model tensor of
    a type the kernels cannot compute with; None when it can."""
    runs = _core.architectures()
    if arch not in runs:
        return f"this engine runs {', '.join(runs)}"
    if config_error:
        return config_error
    computable = set(_core.weight_types())
    for name, ttype, _shape, _nbytes in tensors:
        if ttype not in computable and not name.startswith(VISION_PREFIXES):
            return (f"tensor '{name}' has type {ttype}, which this engine cannot compute with "
                    f"yet; it computes {', '.join(sorted(computable))}")
    return None


def effective_config(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(the config the engine computes with, or the error that stops it) of a model file.

    Opening the file as a model reads its metadata and tokenizer, never tensor data."""
    try:
        return _core.ModelFile(str(path)).config, None
    except PyEngineError as e:
        return None, str(e)


def unsupported_reason(path: str | os.PathLike[str]) -> str | None:
    """Why the native engine cannot run the model file at ``path`` (see ``support_reason``;
    a file that cannot be read is a reason too), or None."""
    try:
        meta, tensors, _lengths, _info = _core.read_gguf(str(path), 0)
    except (PyEngineError, OSError) as e:
        return str(e)
    arch = meta.get("general.architecture", "?")
    error = effective_config(path)[1] if arch in _core.architectures() else None
    return support_reason(arch, tensors, error)
