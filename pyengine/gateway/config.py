"""The product's configuration: the environment variables of the model-selection strategy.

Read once into a frozen ``Config`` (``Config.from_env()``); a bad value is a ``ConfigError``
naming the variable at start-up, never a surprise later. Defaults are the strategy document's,
with one exception: batching is on unless ``ENABLE_BATCHED_INFERENCE=false`` is set (the
document's ``false`` predates the batcher this engine is built around).

What the switches mean here:

- ``OLLAMA_HOST``: the Ollama server the fallback chain sends requests to when the native engine
  cannot serve them (``host``, ``host:port``, ``:port`` or a URL, as Ollama reads it).
- ``OLLAMA_{PRIMARY,FAST,QUALITY,ALTERNATIVE}_MODEL``: the model of each tier.
- ``MODEL_ROUTING_STRATEGY``: ``local-first`` (native engine, then Ollama, then paid APIs if
  enabled) or ``local-only`` (never a paid API, whatever ``PAID_API_ENABLED`` says).
- ``MODEL_FALLBACK_ENABLED``: when the selected tier's model cannot be served locally at all,
  try the neighbouring tiers' models (quality -> alternative -> primary -> fast) before leaving
  the machine. Off by default: a request keeps the model the router chose.
- ``MODEL_SELECTION_LOGGING``: log every routing decision and every fallback with its reason.
- ``PAID_API_ENABLED``, ``PAID_API_MAX_MONTHLY_SPEND`` (USD), ``PAID_API_FAILURE_THRESHOLD``:
  paid APIs only when enabled, only while the month's spend stays under the cap; failures
  before a backend's circuit opens.
- ``ENABLE_PROMPT_CACHE``: reuse cached prompt prefixes across requests. ``ENABLE_KV_CACHE``:
  keep keys and values across requests at all (off implies no prefix reuse; a running request
  always keeps its own). ``ENABLE_BATCHED_INFERENCE``: batch concurrent requests (off: one
  sequence per step). ``MAX_CACHE_SIZE_MB``: memory for keys and values of all sequences.
- ``PYENGINE_KV_CACHE_TYPE`` (else Ollama's ``OLLAMA_KV_CACHE_TYPE``): how that memory stores
  them: ``f16`` (default), ``q8_0`` (1.9x the positions) or ``q4_0`` (3.6x).
- ``PYENGINE_PROMPT_CACHE`` (a folder) and ``PYENGINE_PROMPT_CACHE_MB``: keys and values of
  prefixes worth keeping, on disk across restarts, within that many MiB per model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

STRATEGIES = ("local-first", "local-only")
BACKENDS = ("auto", "native", "cuda", "mlx")
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# Speculative decoding: drafts looked up in the sequence's own tokens, or none.
SPECULATIVE = ("ngram", "off")


class ConfigError(ValueError):
    """An environment variable with a value the engine cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _number(name: str, raw: str, integer: bool, minimum: float, open_min: bool = False) -> Any:
    try:
        value: float = int(raw.strip()) if integer else float(raw.strip())
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if math.isnan(value) or math.isinf(value) or value < minimum or (open_min and value == minimum):
        bound = f"> {minimum:g}" if open_min else f">= {minimum:g}"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def normalize_host(raw: str, name: str = "OLLAMA_HOST") -> str:
    """``host``, ``host:port``, ``:port`` or ``scheme://host:port`` -> ``scheme://host:port``.

    A missing scheme is http, a missing host the document's ``localhost``, a missing port
    Ollama's 11434 (443 for https).
    """
    text = raw.strip()
    if not text:
        raise ConfigError(f"{name} is empty")
    scheme = "http"
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ConfigError(f"{name} must use http or https, got {raw!r}")
    text = text.rstrip("/")
    if "/" in text:
        raise ConfigError(f"{name} must be a host and port, got {raw!r}")
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if text.startswith("[") and "]" in text:  # [ipv6]:port
        host, _, rest = text.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else ""
    host = host or "localhost"
    if port:
        number = _number(name, port, True, 1)
        if number > 65535:
            raise ConfigError(f"{name} has port {port} out of range")
    else:
        port = "443" if scheme == "https" else "11434"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class Config:
    """Every setting of the strategy document, with its defaults (see the module docstring)."""

    ollama_host: str = "http://localhost:11434"
    primary_model: str = "gemma3n:e2b"
    fast_model: str = "gemma3:1b"
    quality_model: str = "gemma3n:e4b"
    alternative_model: str = "gemma3:4b"
    routing_strategy: str = "local-first"
    fallback_enabled: bool = False
    selection_logging: bool = True
    paid_api_enabled: bool = False
    paid_api_max_monthly_spend: float = 20.0
    paid_api_failure_threshold: int = 3
    enable_kv_cache: bool = True
    enable_prompt_cache: bool = True
    enable_batched_inference: bool = True
    max_cache_size_mb: float = 2048.0
    # The document's fallback triggers (FallbackConfig.fallbackTriggers); its quality threshold
    # needs a quality score that no backend returns, so the chain has no such trigger.
    local_failure_threshold: int = 3
    timeout_ms: int = 30_000
    # pyengine's own: which engine computes (PYENGINE_BACKEND): "native" (the C++ core on the
    # CPU), "cuda" (the C++ core on a CUDA GPU), "mlx" (mlx-lm), or "auto" (MLX on Apple
    # silicon when installed, CUDA when built and a GPU is present, else native).
    backend: str = "auto"
    # PYENGINE_KV_CACHE_TYPE, else OLLAMA_KV_CACHE_TYPE: f16, q8_0 or q4_0.
    kv_cache_type: str = "f16"
    # PYENGINE_PROMPT_CACHE, PYENGINE_PROMPT_CACHE_MB: the prompt cache on disk (None: none).
    prompt_cache: str | None = None
    prompt_cache_mb: float = 4096.0
    # PYENGINE_SPECULATIVE: ngram (prompt-lookup drafts, the default), off, or a draft model
    # (a GGUF path or store name of the same vocabulary).
    speculative: str = "ngram"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Reads the environment (or ``env``); unset or empty variables keep their defaults."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() != "" else None

        values: dict[str, Any] = {}
        strings = {"OLLAMA_PRIMARY_MODEL": "primary_model", "OLLAMA_FAST_MODEL": "fast_model",
                   "OLLAMA_QUALITY_MODEL": "quality_model",
                   "OLLAMA_ALTERNATIVE_MODEL": "alternative_model"}
        for var, attr in strings.items():
            if (raw := get(var)) is not None:
                values[attr] = raw.strip()
        bools = {"MODEL_FALLBACK_ENABLED": "fallback_enabled",
                 "MODEL_SELECTION_LOGGING": "selection_logging",
                 "PAID_API_ENABLED": "paid_api_enabled", "ENABLE_KV_CACHE": "enable_kv_cache",
                 "ENABLE_PROMPT_CACHE": "enable_prompt_cache",
                 "ENABLE_BATCHED_INFERENCE": "enable_batched_inference"}
        for var, attr in bools.items():
            if (raw := get(var)) is not None:
                values[attr] = _bool(var, raw)
        if (raw := get("OLLAMA_HOST")) is not None:
            values["ollama_host"] = normalize_host(raw)
        choices = {"MODEL_ROUTING_STRATEGY": ("routing_strategy", STRATEGIES),
                   "PYENGINE_BACKEND": ("backend", BACKENDS),
                   "OLLAMA_KV_CACHE_TYPE": ("kv_cache_type", KV_CACHE_TYPES),
                   # After Ollama's: pyengine's own name wins where both are set.
                   "PYENGINE_KV_CACHE_TYPE": ("kv_cache_type", KV_CACHE_TYPES)}
        for var, (attr, allowed) in choices.items():
            if (raw := get(var)) is not None:
                choice = raw.strip().lower()
                if choice not in allowed:
                    raise ConfigError(f"{var} must be one of {', '.join(allowed)}, got {raw!r}")
                values[attr] = choice
        if (raw := get("PAID_API_MAX_MONTHLY_SPEND")) is not None:
            values["paid_api_max_monthly_spend"] = float(
                _number("PAID_API_MAX_MONTHLY_SPEND", raw, False, 0))
        if (raw := get("PAID_API_FAILURE_THRESHOLD")) is not None:
            values["paid_api_failure_threshold"] = _number("PAID_API_FAILURE_THRESHOLD", raw,
                                                           True, 1)
        if (raw := get("PYENGINE_SPECULATIVE")) is not None:
            mode = raw.strip()
            values["speculative"] = mode.lower() if mode.lower() in SPECULATIVE else mode
        if (raw := get("PYENGINE_PROMPT_CACHE")) is not None:
            values["prompt_cache"] = raw.strip()
        if (raw := get("PYENGINE_PROMPT_CACHE_MB")) is not None:
            values["prompt_cache_mb"] = float(_number("PYENGINE_PROMPT_CACHE_MB", raw, False, 0,
                                                      True))
        if (raw := get("MAX_CACHE_SIZE_MB")) is not None:
            values["max_cache_size_mb"] = float(_number("MAX_CACHE_SIZE_MB", raw, False, 0, True))
        return cls(**values)

    @property
    def paid_allowed(self) -> bool:
        """Paid APIs may be called at all (enabled, and the strategy is not local-only)."""
        return self.paid_api_enabled and self.routing_strategy != "local-only"

    @property
    def prefix_reuse(self) -> bool:
        """Cached prompt prefixes are shared across requests."""
        return self.enable_kv_cache and self.enable_prompt_cache
