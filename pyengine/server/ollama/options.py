"""Ollama's ``options`` object mapped to ``Engine`` generation options.

Options this engine applies are type-checked as Ollama checks them (integers may come as JSON
floats and are truncated) and range-checked by ``GenerateOptions``; a bad value is the
client's error. Ollama options that do not apply here (``num_gpu``, ``num_thread``,
``mirostat``, ``typical_p``, ...) and names Ollama does not know are ignored, as Ollama ignores
unknown names.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pyengine.options import GenerateOptions

_INTEGERS = ("num_predict", "top_k", "repeat_last_n", "seed", "num_ctx")
_FLOATS = ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
           "frequency_penalty")
_BOOLS = ("ignore_eos",)  # a pyengine extension: keep generating past end-of-turn


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'option "{name}" must be of type integer')
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f'option "{name}" must be a finite number')
        value = int(value)  # JSON numbers are floats to Ollama, which truncates them
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'option "{name}" must be of type float')
    if not math.isfinite(value):
        raise ValueError(f'option "{name}" must be a finite number')
    return float(value)


def engine_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword options for ``Engine.stream``/``astream`` from an Ollama ``options`` object.

    Defaults follow Ollama where they differ from the engine's: no ``num_predict`` means no
    limit but the context. Raises ``ValueError`` (a 400) for wrongly typed or out-of-range
    values of the options used here.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError("options must be an object")
    out: dict[str, Any] = {"max_tokens": -1}
    for name, value in options.items():
        if value is None:  # Ollama skips nulls
            continue
        if name in _INTEGERS:
            value = _integer(name, value)
            if name == "num_predict":
                # Ollama: -1 generates until the context is full, -2 fills the context.
                out["max_tokens"] = -1 if value in (-1, -2) else value
                continue
            out[name] = value
        elif name in _FLOATS:
            out[name] = _float(name, value)
        elif name in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f'option "{name}" must be of type boolean')
            out[name] = value
        elif name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or \
                    not all(isinstance(s, str) for s in value):
                raise ValueError('option "stop" must be an array of strings')
            out["stop"] = [s for s in value if s]
    if out.get("num_ctx") is not None and out["num_ctx"] <= 0:
        del out["num_ctx"]  # Ollama treats a zero context as "the default"
    GenerateOptions.from_kwargs(**out)  # range checks, with the option's name in the message
    return out
