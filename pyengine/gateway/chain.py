"""The local-first fallback chain of the strategy document.

A request goes to the native engine first. When the native engine cannot serve it (model
missing, unsupported architecture or quantization, not enough memory), fails, or runs past the
document's time-out (30 s), it goes to the Ollama server at ``OLLAMA_HOST``. After
``local_failure_threshold`` (3) consecutive failures a backend's circuit breaker opens and
requests skip it until a cool-down has passed; one trial call then closes it again or reopens it.
A task whose rule names a fallback model (rubric optimisation: the alternative tier when the
quality model cannot run) tries it locally next; with ``MODEL_FALLBACK_ENABLED`` the
neighbouring tiers' models are tried locally too. Paid APIs
come last, only when ``PAID_API_ENABLED`` (and the strategy is not ``local-only``), only with an
API key, and only while this month's paid spend plus the call's worst-case cost stays within
``PAID_API_MAX_MONTHLY_SPEND``. Every served call goes into the cost ledger; every fallback is
logged (logger ``pyengine.gateway.chain``) with its reason. Embeddings (``embed``) take the
same first two steps for the selected model only, and never a paid API.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar, Union

from pyengine.gateway.breaker import CircuitBreaker
from pyengine.gateway.config import Config
from pyengine.structured.tools import ToolCall
from pyengine.gateway.ledger import CostLedger
from pyengine.gateway.providers import (BackendFailure, CannotServe, Messages, NativeBackend,
                                        OllamaBackend, PaidBackend, Reply, ReplyStream,
                                        estimate_tokens, has_key, paid_models_for)
from pyengine.gateway.routing import TIER_FALLBACKS, Selection, tier_model

log = logging.getLogger("pyengine.gateway.chain")
DEFAULT_COOLDOWN_S = 30.0
PAID_DEFAULT_MAX_TOKENS = 512  # worst-case output when a request sets no limit
T = TypeVar("T")


@dataclass
class Attempt:
    backend: str
    model: str
    outcome: str  # served | cannot-serve | failed | timeout | skipped | refused
    reason: str = ""


@dataclass(kw_only=True)
class Served:
    """Where an answer came from: the model and tier, the backend, the routing decision's
    reason and each backend tried."""

    model: str
    tier: str
    backend: str
    reason: str  # the routing decision's reason
    attempts: list[Attempt] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class Result(Served):
    """A completion and where it came from."""

    text: str
    cost_usd: float
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)  # calls of the request's tools


@dataclass
class EmbedResult(Served):
    """Embeddings (one unit-length vector per input) and where they came from."""

    vectors: list[list[float]]
    prompt_tokens: int


class StreamInterrupted(RuntimeError):
    """The backend serving a stream failed after its first piece was passed on: what was sent
    cannot be taken back, so the stream ends with this error instead of trying another."""


class NoBackendAvailable(RuntimeError):
    """Every backend of the chain refused or failed; ``attempts`` says why, one by one."""

    def __init__(self, attempts: list[Attempt]) -> None:
        self.attempts = attempts
        lines = "; ".join(f"{a.backend}/{a.model}: {a.outcome} ({a.reason})" for a in attempts)
        super().__init__(f"no backend could serve the request: {lines}")


class FallbackChain:
    """native -> Ollama -> paid, with a breaker per backend and a cost ledger."""

    def __init__(self, config: Config | None = None, *, store: Any = None,
                 ledger: CostLedger | None = None, native: Any = None, ollama: Any = None,
                 paid: Sequence[Any] | None = None, cooldown_s: float = DEFAULT_COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or Config.from_env()
        self.ledger = ledger if ledger is not None else CostLedger()
        self.native = native if native is not None else NativeBackend(self.config, store)
        self.ollama = ollama if ollama is not None else OllamaBackend(self.config)
        self.paid = list(paid) if paid is not None else [PaidBackend("openai"),
                                                         PaidBackend("anthropic")]
        self.breakers: dict[str, CircuitBreaker] = {}
        for b in (self.native, self.ollama):
            self.breakers[b.name] = CircuitBreaker(self.config.local_failure_threshold, cooldown_s,
                                                   clock)
        for b in self.paid:
            self.breakers[b.name] = CircuitBreaker(self.config.paid_api_failure_threshold,
                                                   cooldown_s, clock)

    def _attempt(self, backend: Any, model: str, attempts: list[Attempt],
                 call: Callable[[], T]) -> T | None:
        """``call()`` if ``backend``'s breaker lets it through; None (and the reason in
        ``attempts``) when the breaker is open or the backend refuses or fails. A refusal is not
        the backend's failure; a failure counts against its breaker. Whoever gets a result
        settles the breaker (``_relay``, ``embed``)."""
        breaker = self.breakers[backend.name]
        if not breaker.allow():
            attempts.append(Attempt(backend.name, model, "skipped",
                                    f"circuit open after {breaker.threshold} failures"))
            return None
        try:
            return call()
        except CannotServe as e:
            breaker.release()
            attempts.append(Attempt(backend.name, model, "cannot-serve", str(e)))
        except BackendFailure as e:
            breaker.record_failure()
            attempts.append(Attempt(backend.name, model, "timeout" if e.timeout else "failed",
                                    str(e)))
        except StopIteration:
            breaker.record_failure()
            attempts.append(Attempt(backend.name, model, "failed", "an empty reply stream"))
        except BaseException:  # the request's own error (bad input): nothing about the backend
            breaker.release()
            raise
        return None

    def _start(self, backend: Any, model: str, messages: Messages, options: Mapping[str, Any],
               attempts: list[Attempt], whole: bool) -> tuple[list, ReplyStream] | None:
        """Asks ``backend``; on success the items received so far and the rest of its stream.

        Until this returns, a refusal or failure only moves the request on to the next backend:
        with ``whole`` that covers the entire reply (nothing is passed on before it is complete),
        otherwise up to its first item. A started backend's breaker is settled by ``_relay``."""
        def call() -> tuple[list, ReplyStream]:
            stream = backend.chat_stream(model, messages, options, self.config.timeout_ms / 1000)
            return (list(stream) if whole else [next(stream)]), stream

        return self._attempt(backend, model, attempts, call)

    def _relay(self, backend: Any, model: str, tier: str, head: list, stream: ReplyStream,
               attempts: list[Attempt], selection: Selection, task_type: str | None,
               t0: float) -> Iterator[Union[str, Result]]:
        """The started backend's pieces, then the Result (recorded in the ledger)."""
        breaker = self.breakers[backend.name]
        settled = False
        try:
            for item in _chain(head, stream):
                if not isinstance(item, Reply):
                    yield item
                    continue
                breaker.record_success()
                settled = True
                _served(backend, model, item.model, attempts)
                self.ledger.record(backend.name, item.model, backend.paid, item.prompt_tokens,
                                   item.completion_tokens, item.cost_usd, tier=tier,
                                   task_type=task_type)
                yield Result(item.text, item.cost_usd, item.done_reason, item.prompt_tokens,
                             item.completion_tokens, item.tool_calls, model=item.model, tier=tier,
                             backend=backend.name, reason=selection.reason, attempts=attempts,
                             duration_s=time.perf_counter() - t0)
                return
            raise BackendFailure("the reply stream ended without its final record")
        except (BackendFailure, CannotServe) as e:
            breaker.record_failure()
            settled = True
            attempts.append(Attempt(backend.name, model, "failed", f"mid-stream: {e}"))
            log.warning("fallback: %s/%s failed mid-stream: %s", backend.name, model, e)
            raise StreamInterrupted(f"{backend.name}/{model} failed mid-stream: {e}") from None
        finally:
            if not settled:  # the caller stopped reading: neither a success nor a failure
                breaker.release()
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _paid_policy_refusal(self) -> str | None:
        if not self.config.paid_api_enabled:
            return "paid APIs are disabled (PAID_API_ENABLED is not true)"
        if self.config.routing_strategy == "local-only":
            return "the routing strategy is local-only"
        return None

    def _paid_cap_refusal(self, cost_bound: float) -> str | None:
        spent = self.ledger.month_spend()
        cap = self.config.paid_api_max_monthly_spend
        if spent + cost_bound > cap:
            return (f"the monthly cap would be exceeded: ${spent:.4f} spent of ${cap:.2f}, "
                    f"this call may cost up to ${cost_bound:.4f}")
        return None

    def run(self, selection: Selection, messages: Messages,
            options: Mapping[str, Any] | None = None, task_type: str | None = None) -> Result:
        """Serves ``messages`` with the selected model, falling back as the policy allows."""
        for item in self._serve(selection, messages, options, task_type, whole=True):
            if isinstance(item, Result):
                return item
        raise AssertionError("a served stream ends with its Result")

    def stream(self, selection: Selection, messages: Messages,
               options: Mapping[str, Any] | None = None,
               task_type: str | None = None) -> Iterator[Union[str, Result]]:
        """``run`` as the reply is made: text pieces, then the Result. Backends are tried in
        the same order until one produces its first piece; if that one fails later,
        ``StreamInterrupted`` is raised (the pieces passed on cannot be taken back). Raises
        ``NoBackendAvailable`` before any piece when no backend serves the request. Closing
        the iterator early cancels the backend's request."""
        return self._serve(selection, messages, options, task_type, whole=False)

    def _serve(self, selection: Selection, messages: Messages,
               options: Mapping[str, Any] | None, task_type: str | None,
               whole: bool) -> Iterator[Union[str, Result]]:
        options = dict(options or {})
        t0 = time.perf_counter()
        attempts: list[Attempt] = []
        candidates = [(selection.model, selection.tier.value)]
        if selection.fallback is not None:  # the document's own fallback for this task
            candidates.append((selection.fallback.model, selection.fallback.tier.value))
        if self.config.fallback_enabled:
            candidates += [(tier_model(t, self.config), t.value)
                           for t in TIER_FALLBACKS[selection.tier]
                           if (tier_model(t, self.config), t.value) not in candidates]
        for model, tier in candidates:
            for backend in (self.native, self.ollama):
                started = self._start(backend, model, messages, options, attempts, whole)
                if started is not None:
                    yield from self._relay(backend, model, tier, *started, attempts, selection,
                                           task_type, t0)
                    return
        policy = self._paid_policy_refusal()
        if policy is not None:
            attempts.append(Attempt("paid", "*", "refused", policy))
        else:
            out_tokens = int(options.get("max_tokens") or options.get("num_predict")
                             or PAID_DEFAULT_MAX_TOKENS)
            if out_tokens < 0:
                out_tokens = PAID_DEFAULT_MAX_TOKENS
            for pm in paid_models_for(selection.tier.value):
                backend = next((b for b in self.paid if b.name == pm.provider), None)
                if backend is None:
                    continue
                bound = (estimate_tokens(messages) + out_tokens) * pm.usd_per_million / 1e6
                refusal = self._paid_cap_refusal(bound)
                if refusal is None and not has_key(pm.provider):
                    refusal = f"no API key for {pm.provider}"
                if refusal is not None:
                    attempts.append(Attempt(pm.provider, pm.model, "refused", refusal))
                    continue
                started = self._start(backend, pm.model, messages,
                                      {**options, "max_tokens": out_tokens}, attempts, whole)
                if started is not None:
                    yield from self._relay(backend, pm.model, selection.tier.value, *started,
                                           attempts, selection, task_type, t0)
                    return
        raise _none_served(attempts)

    def embed(self, selection: Selection, inputs: Sequence[str | Sequence[int]],
              truncate: bool = True, task_type: str | None = "embedding") -> EmbedResult:
        """Embeddings of ``inputs`` with the selected model: the native engine, then Ollama.
        Only that model (another model's vectors live in another space, so no other tier is
        tried) and never a paid API (theirs are other models too). Raises
        ``NoBackendAvailable`` when neither serves it; an input the serving backend refuses
        (``ValueError``: empty, or longer than the context without ``truncate``) propagates."""
        t0 = time.perf_counter()
        attempts: list[Attempt] = []
        model = selection.model
        for backend in (self.native, self.ollama):
            embed = getattr(backend, "embed", None)
            if embed is None:
                attempts.append(Attempt(backend.name, model, "cannot-serve", "it does not embed"))
                continue
            out = self._attempt(backend, model, attempts, partial(
                embed, model, inputs, truncate, self.config.timeout_ms / 1000))
            if out is None:
                continue
            self.breakers[backend.name].record_success()
            _served(backend, model, out.model, attempts)
            self.ledger.record(backend.name, out.model, backend.paid, out.prompt_tokens, 0, 0.0,
                               tier=selection.tier.value, task_type=task_type)
            return EmbedResult(out.vectors, out.prompt_tokens, model=out.model,
                               tier=selection.tier.value, backend=backend.name,
                               reason=selection.reason, attempts=attempts,
                               duration_s=time.perf_counter() - t0)
        attempts.append(Attempt("paid", "*", "skipped", "paid APIs embed with other models"))
        raise _none_served(attempts)

    def close(self) -> None:
        close = getattr(self.native, "close", None)
        if close:
            close()


def _none_served(attempts: list[Attempt]) -> NoBackendAvailable:
    """Logs each attempt's reason; the error to raise when none served."""
    for a in attempts:
        log.warning("fallback: %s/%s %s: %s", a.backend, a.model, a.outcome, a.reason)
    return NoBackendAvailable(attempts)


def _served(backend: Any, model: str, served_model: str, attempts: list[Attempt]) -> None:
    """Records that ``backend`` served, and logs each earlier attempt's reason."""
    attempts.append(Attempt(backend.name, model, "served"))
    for a in attempts[:-1]:
        log.warning("fallback: %s/%s %s: %s", a.backend, a.model, a.outcome, a.reason)
    if len(attempts) > 1:
        log.warning("fallback: served by %s/%s after %d attempt(s)", backend.name, served_model,
                    len(attempts))


def _chain(head: list, stream: ReplyStream) -> Iterator[Union[str, Reply]]:
    yield from head
    yield from stream
