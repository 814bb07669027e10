"""The one route every request for a model takes, on both APIs (generation, chat and
embeddings): which model serves it (a model this server runs, a tier -- ``fast``, ``primary``,
``alternative``, ``quality`` -- or ``auto``), a lease on it from the server's model pool, and the
fallback chain for what the pool cannot run.

A tier name maps to the tier's model (``OLLAMA_*_MODEL``); ``auto`` asks the tier router with
the task hints found in ``options`` (``task_type``, ``priority``, ``estimated_tokens``,
``requires_high_quality``, ``judge``, ``thinking_budget``, ``complexity``,
``resource_constrained``; without ``estimated_tokens`` the prompt's length stands in).
A model this server does not run, or one its pool cannot run now (a file this engine cannot
run, or the memory check refusing the load this time), goes to the fallback chain: its native
step (the same pool, which may hold the other models the chain tries), the Ollama server at
``OLLAMA_HOST``, then paid APIs when enabled and under the monthly cap (never for embeddings).
When nothing serves it, the answer is Ollama's 404 for an unknown model, or a 503 naming why a
model served here cannot run. Requests the chain sends carry ``X-Pyengine-Fallback``, and such
requests never fall back again, so a server whose ``OLLAMA_HOST`` points at itself cannot loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Sequence

from pyengine.gateway.chain import (EmbedResult, FallbackChain, NoBackendAvailable, Result,
                                    StreamInterrupted)
from pyengine.gateway.config import Config
from pyengine.gateway.ledger import CostLedger
from pyengine.gateway.providers import NativeBackend, OllamaBackend
from pyengine.gateway.routing import Selection, Task, Tier, select_model, tier_model
from pyengine.pool import Lease, ModelEntry, ModelNotFound, ModelPool, ModelUnavailable
from pyengine.server.errors import APIError, bad_request, log

FALLBACK_HEADER = "X-Pyengine-Fallback"
TIERS = {t.value: t for t in Tier}
TASK_HINTS = {"task_type": "type", "priority": "priority", "estimated_tokens": "estimated_tokens",
              "requires_high_quality": "requires_high_quality", "judge": "judge",
              "thinking_budget": "thinking_budget", "complexity": "complexity",
              "resource_constrained": "resource_constrained"}


@dataclass
class Target:
    """Where a request goes: ``entry`` (a model served here) or, when None, the fallback
    chain with ``selection``; ``unavailable`` says why a model listed here cannot run here (at
    start, or when ``lease_here`` found it could not load it now)."""

    requested: str
    model: str
    entry: ModelEntry | None
    selection: Selection
    unavailable: str | None = None


def make_chain(config: Config, pool: ModelPool, ledger: CostLedger | None = None
               ) -> FallbackChain:
    """The server's fallback chain: its native step is the server's own pool."""
    return FallbackChain(config, native=NativeBackend(config, pool=pool), ledger=ledger,
                         ollama=OllamaBackend(config, headers={FALLBACK_HEADER: "1"}))


def may_fall_back(request: Any) -> bool:
    """Whether a request may take the fallback chain: not one the chain sent (never twice)."""
    return request.headers.get(FALLBACK_HEADER) is None


def ledger_of(state: Any) -> CostLedger:
    """The app's cost ledger, opened on first use (a server that records nothing opens none)."""
    if getattr(state, "ledger", None) is None:
        state.ledger = CostLedger()
    return state.ledger


def record_local(state: Any, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    """A call this server answered itself, in the ledger at $0 (the strategy's cost tracking
    compares local and paid use). A ledger that cannot be written is logged, not fatal."""
    try:
        ledger_of(state).record("native", model, False, prompt_tokens, completion_tokens, 0.0)
    except Exception as e:  # sqlite errors: the answer was given; the count is lost
        log.warning("cost ledger: cannot record a native call: %s", e)


def _chain(state: Any, target: Target, fallback_allowed: bool) -> FallbackChain:
    """The app's chain (made on first use); without fallback, the answer ``_not_served``."""
    if not (state.fallback and fallback_allowed):
        raise _not_served(target)
    if state.chain is None:
        state.chain = make_chain(state.config, state.models, ledger_of(state))
    return state.chain


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


def resolve(models: ModelPool, config: Config, name: str, options: dict[str, Any] | None,
            prompt_chars: int) -> Target:
    """The target of a request for model ``name`` (see the module docstring)."""
    if not name:
        raise bad_request("model is required")
    key = name.strip().lower()
    if key == "auto":
        selection = select_model(task_from_options(options, prompt_chars), config)
    elif key in TIERS:
        tier = TIERS[key]
        selection = Selection(tier_model(tier, config), tier,
                              f"the {tier.value} tier was asked for")
    else:
        selection = Selection(name, Tier.PRIMARY, "asked by name")
    try:
        entry: ModelEntry | None = models.resolve(selection.model)
    except ModelNotFound:
        entry = None
    unavailable = models.unavailable(entry.name) if entry is not None else None
    # A model listed here that cannot run here goes to the fallback chain like a missing one.
    return Target(name, selection.model, None if unavailable else entry, selection, unavailable)


async def lease_here(state: Any, target: Target, keep_alive: float | None = None) -> Lease | None:
    """A lease on the target's model from the server's pool (``keep_alive`` None: the pool's),
    or None when the request goes to the fallback chain instead: a model not served here, or
    one the pool cannot run now (``target.unavailable`` then says why: its file, the memory
    check this time, or a load that failed otherwise, such as a file that went away)."""
    if target.entry is None:
        return None
    try:
        return await state.models.acquire(target.entry.name, keep_alive)
    except ModelUnavailable as e:
        reason = e.reason
    except (OSError, ValueError) as e:
        log.error("loading %s failed: %s", target.entry.name, e)
        reason = f"it failed to load: {e}"
    target.entry, target.unavailable = None, reason
    return None


def not_loaded(target: Target) -> APIError:
    """The answer to a request that only loads a model the pool cannot run now."""
    return APIError(503, str(ModelUnavailable(target.model, target.unavailable or "")))


def _not_served(target: Target) -> APIError:
    """The answer when no backend of the chain serves the request: Ollama's 404 for an unknown
    model (what its clients expect), or a 503 naming why a model listed here cannot run."""
    if target.unavailable:
        return APIError(503, f"model {target.model!r} cannot run on this server "
                             f"({target.unavailable}), and no fallback could serve it")
    return APIError(404, str(ModelNotFound(target.model)))


def _chain_options(options: Mapping[str, Any]) -> dict[str, Any]:
    opts = {k: v for k, v in options.items() if k in ("max_tokens", "temperature", "top_k",
                                                      "top_p", "min_p", "seed", "stop",
                                                      "repeat_penalty", "num_ctx", "format",
                                                      "tools")}
    if opts.get("max_tokens") == -1:
        opts.pop("max_tokens")
    return opts


async def run_fallback(state: Any, target: Target, messages: Sequence[Mapping],
                       options: Mapping[str, Any], fallback_allowed: bool) -> Result:
    """Serves ``messages`` through the chain (in a worker thread), the whole reply at once.
    When no backend serves it, see ``_not_served``; the chain has logged each reason."""
    chain = _chain(state, target, fallback_allowed)
    try:
        return await asyncio.to_thread(chain.run, target.selection, list(messages),
                                       _chain_options(options))
    except NoBackendAvailable:
        raise _not_served(target) from None


async def embed_fallback(state: Any, target: Target, inputs: Sequence[str | Sequence[int]],
                         truncate: bool, fallback_allowed: bool) -> EmbedResult:
    """Embeds ``inputs`` through the chain (its native step, then Ollama; see
    ``FallbackChain.embed``) in a worker thread. When neither serves it, see ``_not_served``;
    an input the serving backend refuses is a 400."""
    chain = _chain(state, target, fallback_allowed)
    try:
        return await asyncio.to_thread(chain.embed, target.selection, list(inputs), truncate)
    except NoBackendAvailable:
        raise _not_served(target) from None
    except ValueError as e:
        raise bad_request(str(e)) from None


_END = object()


async def stream_fallback(state: Any, target: Target, messages: Sequence[Mapping],
                          options: Mapping[str, Any], fallback_allowed: bool
                          ) -> AsyncIterator[dict[str, Any]]:
    """Serves ``messages`` through the chain as the reply is made: records ``{"text"}``, then
    ``{"result": Result}``, or ``{"error"}`` when the serving backend fails mid-stream.

    Returns once the first piece is there, so a request no backend serves still gets its
    status (see ``_not_served``). A worker thread reads the chain's stream; closing the
    records (a client that left) stops it after its current piece and closes the upstream."""
    chain = _chain(state, target, fallback_allowed)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    stream = chain.stream(target.selection, list(messages), _chain_options(options))

    def pump() -> None:
        try:
            for item in stream:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():
                    break
        except BaseException as e:  # delivered to the loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            stream.close()
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    worker = loop.run_in_executor(None, pump)
    first = await queue.get()
    if isinstance(first, BaseException):
        await worker
        if isinstance(first, NoBackendAvailable):
            raise _not_served(target)
        raise first

    async def records() -> AsyncIterator[dict[str, Any]]:
        item = first
        try:
            while item is not _END:
                if isinstance(item, Result):
                    yield {"result": item}
                elif isinstance(item, StreamInterrupted):
                    yield {"error": str(item)}
                elif isinstance(item, BaseException):
                    yield {"error": f"the fallback failed: {item}"}
                else:
                    yield {"text": item}
                item = await queue.get()
        finally:
            stop.set()

    return records()
