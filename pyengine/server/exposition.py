"""The Prometheus text exposition format (version 0.0.4), written by hand.

Each metric family is a ``# HELP`` line, a ``# TYPE`` line and its samples,
``name{label="value",...} number``; label values escape backslash, double quote and newline.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = frozenset({"counter", "gauge", "untyped"})

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Sample = tuple[Mapping[str, str], float]


def escape_label_value(value: str) -> str:
    """A label value as it appears between double quotes."""
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers exactly, floats in Python's shortest form, NaN and infinities
    as Prometheus spells them."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_labels(labels: Mapping[str, str]) -> str:
    """``{a="x",b="y"}``, or nothing without labels."""
    if not labels:
        return ""
    for name in labels:
        if not _LABEL.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    inner = ",".join(f'{name}="{escape_label_value(str(value))}"'
                     for name, value in labels.items())
    return "{" + inner + "}"


class Exposition:
    """Metric families collected in order, rendered by ``text()``."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[Sample] | float = ()) -> None:
        """Adds family ``name`` of ``kind`` (a bare number is one sample without labels)."""
        if not _NAME.fullmatch(name) or name in self._names:
            raise ValueError(f"invalid or repeated metric name {name!r}")
        if kind not in KINDS:
            raise ValueError(f"invalid metric type {kind!r}")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")
        if isinstance(samples, (int, float)):
            samples = [({}, samples)]
        for labels, value in samples:
            self._lines.append(f"{name}{format_labels(labels)} {format_value(value)}")

    def text(self) -> str:
        """The exposition, one line each, ending with a newline."""
        return "\n".join(self._lines) + "\n"
