"""``keep_alive`` values as Ollama reads them: seconds as a number, or a Go duration string."""

from __future__ import annotations

import math
import re
from typing import Any

FOREVER = math.inf  # a negative keep_alive: the model stays loaded until told otherwise
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default, "5m"

_NUMBER = re.compile(r"[0-9]*\.?[0-9]+")
_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``"5m"``, ``"1h30m"``, ``"250ms"``, ``"-1m"``) in seconds.

    A bare number is taken as seconds, as ``OLLAMA_KEEP_ALIVE`` does. Negative durations mean
    ``FOREVER``. Raises ``ValueError`` for anything else.
    """
    s = text.strip()
    negative = s[:1] == "-"
    if s[:1] in ("+", "-"):
        s = s[1:]
    if not s:
        raise ValueError(f'invalid duration "{text}"')
    if _NUMBER.fullmatch(s):
        seconds = float(s)
    else:
        pos, seconds = 0, 0.0
        while pos < len(s):
            m = _PART.match(s, pos)
            if m is None:
                raise ValueError(f'invalid duration "{text}"')
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
    if negative and seconds > 0:
        return FOREVER
    return seconds


def parse_keep_alive(value: Any, default: float = DEFAULT_KEEP_ALIVE) -> float:
    """A request's ``keep_alive`` in seconds (``FOREVER`` for negative values).

    ``None`` gives ``default``; numbers are seconds; strings are Go durations. Raises
    ``ValueError`` for other types and malformed strings.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration string")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError("keep_alive must not be NaN")
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("keep_alive must be a number of seconds or a duration string")
