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
logged (logger ``pyengine.fallback``) with its reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .backends import (BackendFailure, CannotServe, Messages, NativeBackend, OllamaBackend,
                       PaidBackend, Reply, estimate_tokens, has_key, paid_models_for)
from .breaker import CircuitBreaker
from .config import Config
from .ledger import CostLedger
from .routing import TIER_FALLBACKS, Selection, tier_model

log = logging.getLogger("pyengine.fallback")
DEFAULT_COOLDOWN_S = 30.0
PAID_DEFAULT_MAX_TOKENS = 512  # worst-case output when a request sets no limit


@dataclass
class Attempt:
    backend: str
    model: str
    outcome: str  # served | cannot-serve | failed | timeout | skipped | refused
    reason: str = ""


@dataclass
class Result:
    """A completion and where it came from."""

    text: str
    model: str
    tier: str
    backend: str
    cost_usd: float
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    reason: str  # the routing decision's reason
    attempts: list[Attempt] = field(default_factory=list)
    duration_s: float = 0.0


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

    def _try(self, backend: Any, model: str, messages: Messages, options: Mapping[str, Any],
             attempts: list[Attempt]) -> Reply | None:
        breaker = self.breakers[backend.name]
        if not breaker.allow():
            attempts.append(Attempt(backend.name, model, "skipped",
                                    f"circuit open after {breaker.threshold} failures"))
            return None
        try:
            reply = backend.chat(model, messages, options, self.config.timeout_ms / 1000)
        except CannotServe as e:
            breaker.release()
            attempts.append(Attempt(backend.name, model, "cannot-serve", str(e)))
            return None
        except BackendFailure as e:
            breaker.record_failure()
            attempts.append(Attempt(backend.name, model, "timeout" if e.timeout else "failed",
                                    str(e)))
            return None
        breaker.record_success()
        attempts.append(Attempt(backend.name, model, "served"))
        return reply

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
        served: tuple[Any, Reply, str] | None = None
        for model, tier in candidates:
            for backend in (self.native, self.ollama):
                reply = self._try(backend, model, messages, options, attempts)
                if reply is not None:
                    served = (backend, reply, tier)
                    break
            if served:
                break
        policy = self._paid_policy_refusal() if served is None else None
        if policy is not None:
            attempts.append(Attempt("paid", "*", "refused", policy))
        elif served is None:
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
                reply = self._try(backend, pm.model, messages, {**options,
                                                                "max_tokens": out_tokens},
                                  attempts)
                if reply is not None:
                    served = (backend, reply, selection.tier.value)
                    break
        for a in attempts[:-1] if served else attempts:
            log.warning("fallback: %s/%s %s: %s", a.backend, a.model, a.outcome, a.reason)
        if served is None:
            raise NoBackendAvailable(attempts)
        backend, reply, tier = served
        self.ledger.record(backend.name, reply.model, backend.paid, reply.prompt_tokens,
                           reply.completion_tokens, reply.cost_usd, tier=tier, task_type=task_type)
        if len(attempts) > 1:
            log.warning("fallback: served by %s/%s after %d attempt(s)", backend.name, reply.model,
                        len(attempts))
        return Result(reply.text, reply.model, tier, backend.name, reply.cost_usd,
                      reply.done_reason, reply.prompt_tokens, reply.completion_tokens,
                      selection.reason, attempts, time.perf_counter() - t0)

    def close(self) -> None:
        close = getattr(self.native, "close", None)
        if close:
            close()
