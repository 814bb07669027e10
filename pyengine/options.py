"""Generation options: defaults, Ollama-style aliases and validation."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

# Ollama option names that mean the same as ours.
_ALIASES = {"num_predict": "max_tokens"}


@dataclass(frozen=True)
class GenerateOptions:
    """Sampling and stopping settings of one request (defaults as in the public API)."""

    max_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    num_ctx: int | None = None  # positions this request may use (None: the engine's n_ctx)
    keep: bool = False  # write the prompt's KV blocks to the engine's prompt cache on disk
    speculative: bool = True  # may draft tokens when the engine decodes speculatively

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any] | None = None, **kwargs: Any) -> "GenerateOptions":
        """Builds validated options from keyword arguments (and/or an Ollama ``options`` dict).

        Unknown names and values out of range raise ``ValueError`` naming the option.
        """
        merged: dict[str, Any] = {}
        for source in (options or {}, kwargs):
            for key, value in source.items():
                merged[_ALIASES.get(key, key)] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}")
        opts = cls(**{k: v for k, v in merged.items() if v is not None or k == "seed"})
        opts._validate()
        return opts

    def _validate(self) -> None:
        def number(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"option {name} must be a number, got {value!r}")
            if value < lo or value > hi or (lo_open and value == lo):
                raise ValueError(f"option {name}={value!r} is out of range")

        def integer(name: str, lo: int, hi: int = 2**31 - 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"option {name} must be an integer, got {value!r}")
            if value < lo or value > hi:
                raise ValueError(f"option {name}={value!r} is out of range [{lo}, {hi}]")

        integer("max_tokens", -1)
        number("temperature", 0.0, 100.0)
        integer("top_k", 0)
        number("top_p", 0.0, 1.0, lo_open=True)
        number("min_p", 0.0, 1.0)
        number("repeat_penalty", 0.0, 100.0, lo_open=True)
        integer("repeat_last_n", -1)
        number("presence_penalty", -100.0, 100.0)
        number("frequency_penalty", -100.0, 100.0)
        if self.seed is not None:
            integer("seed", -(2**63), 2**64 - 1)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if not isinstance(self.stop, Iterable) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError("option stop must be a string or a list of strings")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.num_ctx is not None:
            integer("num_ctx", 1)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError("option ignore_eos must be a bool")
        if not isinstance(self.keep, bool):
            raise ValueError("option keep must be a bool")
        if not isinstance(self.speculative, bool):
            raise ValueError("option speculative must be a bool")

    def native_seed(self) -> int:
        """The seed handed to the native sampler: the given one, or fresh randomness."""
        if self.seed is None or self.seed < 0:
            return int.from_bytes(os.urandom(8), "little")
        return self.seed % 2**64

    def native(self) -> Any:
        """These options as the core's ``GenerateOptions``: what every backend core's ``submit``
        takes (the seed drawn here when none was given)."""
        from pyengine import _core

        n = _core.GenerateOptions()
        for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                     "presence_penalty", "frequency_penalty", "max_tokens", "ignore_eos"):
            setattr(n, name, getattr(self, name))
        n.seed = self.native_seed()
        n.stop = list(self.stop)
        return n
