"""Which model serves a request: a model this server runs, a tier (``fast``, ``primary``,
``alternative``, ``quality``), or ``auto``; and the fallback chain for what it cannot run.

A tier name maps to the tier's model (``OLLAMA_*_MODEL``); ``auto`` asks the tier router with
the task hints found in ``options`` (``task_type``, ``priority``, ``estimated_tokens``,
``requires_high_quality``, ``judge``, ``thinking_budget``, ``complexity``,
``resource_constrained``; without ``estimated_tokens`` the prompt's length stands in).
A model this server does not run, or cannot load, goes to the fallback chain: the Ollama
server at ``OLLAMA_HOST``, then paid APIs when enabled and under the monthly cap. Requests the
chain sends carry ``X-Pyengine-Fallback``, and such requests never fall back again, so a
server whose ``OLLAMA_HOST`` points at itself cannot loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..backends import CannotServe, Messages, OllamaBackend, Reply
from ..config import Config
from ..fallback import FallbackChain, NoBackendAvailable, Result
from ..routing import Selection, Task, Tier, select_model, tier_model
from .errors import APIError, bad_request
from .models import ModelEntry, ModelNotFound, ModelSet

FALLBACK_HEADER = "X-Pyengine-Fallback"
TIERS = {t.value: t for t in Tier}
TASK_HINTS = {"task_type": "type", "priority": "priority", "estimated_tokens": "estimated_tokens",
              "requires_high_quality": "requires_high_quality", "judge": "judge",
              "thinking_budget": "thinking_budget", "complexity": "complexity",
              "resource_constrained": "resource_constrained"}


@dataclass
class Target:
    """Where a request goes: ``entry`` (a model served here) or, when None, the fallback
    chain with ``selection``."""

    requested: str
    model: str
    entry: ModelEntry | None
    selection: Selection


class _NotServedHere:
    """The chain's native step in a server: what the server runs was tried already."""

    name, paid = "native", False

    def chat(self, model: str, messages: Messages, options: Mapping[str, Any],
             timeout_s: float) -> Reply:
        raise CannotServe(f"model {model!r} is not served by this server")


def make_chain(config: Config) -> FallbackChain:
    """The server's fallback chain: no native step (the server's own models come first)."""
    return FallbackChain(config, native=_NotServedHere(),
                         ollama=OllamaBackend(config, headers={FALLBACK_HEADER: "1"}))


def task_from_options(options: dict[str, Any] | None, prompt_chars: int) -> Task:
    """The task hints in ``options`` (removed from it) as a routing ``Task``."""
    hints: dict[str, Any] = {}
    if options:
        for key in list(options):
            if key in TASK_HINTS:
                hints[TASK_HINTS[key]] = options.pop(key)
    hints.setdefault("estimated_tokens", max(prompt_chars // 4, 1))
    try:
        return Task.of(hints)
    except (TypeError, ValueError) as e:
        raise bad_request(f"bad task hint: {e}") from None


def resolve(models: ModelSet, config: Config, name: str, options: dict[str, Any] | None,
            prompt_chars: int) -> Target:
    """The target of a request for model ``name`` (see the module docstring)."""
    if not name:
        raise bad_request("model is required")
    key = name.strip().lower()
    if key == "auto":
        selection = select_model(task_from_options(options, prompt_chars), config)
    elif key in TIERS:
        tier = TIERS[key]
        selection = Selection(tier_model(tier, config), tier, f"the {tier.value} tier was asked for")
    else:
        try:
            return Target(name, name, models.resolve(name), Selection(name, Tier.PRIMARY,
                                                                      "asked by name"))
        except ModelNotFound:
            return Target(name, name, None, Selection(name, Tier.PRIMARY, "asked by name"))
    try:
        entry = models.resolve(selection.model)
    except ModelNotFound:
        entry = None
    return Target(name, selection.model, entry, selection)


async def run_fallback(chain: FallbackChain | None, target: Target, messages: Sequence[Mapping],
                       options: Mapping[str, Any], fallback_allowed: bool) -> Result:
    """Serves ``messages`` through the chain (in a worker thread). When no backend serves it,
    the answer is Ollama's 404 for an unknown model (what a client of Ollama expects); the
    chain has logged each backend's reason."""
    if chain is None or not fallback_allowed:
        raise APIError(404, str(ModelNotFound(target.model)))
    opts = {k: v for k, v in options.items() if k in ("max_tokens", "temperature", "top_k",
                                                      "top_p", "min_p", "seed", "stop",
                                                      "repeat_penalty", "num_ctx")}
    if opts.get("max_tokens") == -1:
        opts.pop("max_tokens")
    try:
        return await asyncio.to_thread(chain.run, target.selection, list(messages), opts)
    except NoBackendAvailable:
        raise APIError(404, str(ModelNotFound(target.model))) from None
