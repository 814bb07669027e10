"""Metric families in Prometheus' text exposition format (0.0.4), written by the official
``prometheus_client`` (which escapes label values and help text, spells NaN and infinities,
and names counters as Prometheus expects).

``Exposition`` collects the families of one scrape, in order; ``text()`` renders them.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_KINDS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Sample = tuple[Mapping[str, str], float]


class _Snapshot:
    """A collector that returns the families it was given (one scrape's values)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class Exposition:
    """Metric families collected in order, rendered by ``text()``."""

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._names: set[str] = set()

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[Sample] | float = ()) -> None:
        """Adds family ``name`` of ``kind`` (``counter`` names end in ``_total``; a bare number
        is one sample without labels). Every sample of a family has the same label names."""
        if not _NAME.fullmatch(name) or name in self._names or kind not in _KINDS:
            raise ValueError(f"invalid or repeated metric {name!r} of type {kind!r}")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        if isinstance(samples, (int, float)):
            samples = [({}, samples)]
        samples = list(samples)
        labels = list(samples[0][0]) if samples else []
        if any(not _LABEL.fullmatch(n) or n.startswith("__") for n in labels):
            raise ValueError(f"invalid label names {labels}")
        family = _KINDS[kind](name, help_text, labels=labels)
        for sample_labels, value in samples:
            if list(sample_labels) != labels:
                raise ValueError(f"{name}: every sample needs the labels {labels}")
            family.add_metric([str(sample_labels[n]) for n in labels], value)
        self._names.add(name)
        self._families.append(family)

    def text(self) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self._families))
        return generate_latest(registry).decode("utf-8")
