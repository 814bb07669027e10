"""``GET /metrics``: the server's counters in Prometheus' text format.

HTTP requests by method, route and status (counted by ``MetricsMiddleware`` around the whole
app, so refusals by the other middleware count too), the generation requests in flight and
refused, and for each loaded model its engine's scheduler and KV cache (``Engine.stats``).

Engine counters restart at zero when a model is reloaded; ``EngineLedger`` keeps the totals
of unloaded engines so the exported counters never go down.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyengine import __version__
from pyengine.errors import PyEngineError
from pyengine.server.ops.exposition import CONTENT_TYPE, Exposition, Sample
from pyengine.server.ops.limits import GENERATION_PATHS, QueueLimit

router = APIRouter()

# Engine.stats() keys that only grow during an engine's life.
ENGINE_COUNTERS = ("prompt_tokens", "decode_tokens", "steps", "step_sequences", "step_tokens",
                   "preemptions", "prefix_query_tokens", "prefix_hit_tokens", "kv_evictions",
                   "finished", "cancelled", "failed", "drafted", "draft_accepted")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of paths no route serves (keeps labels bounded)


@dataclass
class _Seen:
    name: str
    ref: weakref.ReferenceType[Any]
    last: dict[str, int] = field(default_factory=dict)


class EngineLedger:
    """Counters of every engine seen, summed per model name across loads and unloads.

    ``observe`` reads the loaded engines; an engine no longer loaded is read one last time (if
    it is not closed yet) and its counts move to the model's retired totals. Counts an engine
    made after its last observation are lost, which is why the middleware observes at the
    start and at the end of each generation response, before a model can be unloaded.
    """

    def __init__(self) -> None:
        self._seen: dict[int, _Seen] = {}
        self._retired: dict[str, Counter[str]] = {}
        # Reentrant: a weak reference's callback may run in the middle of observe().
        self._lock = threading.RLock()

    def observe(self, loaded: Iterable[Any]) -> dict[str, dict[str, int]]:
        """Reads ``loaded`` models (``.name``, ``.engine``): model name -> current stats."""
        live: dict[str, dict[str, int]] = {}
        with self._lock:
            current: set[int] = set()
            for model in loaded:
                engine, key = model.engine, id(model.engine)
                seen = self._seen.get(key)
                if seen is None or seen.ref() is not engine:
                    self._retire(key)
                    seen = _Seen(model.name, weakref.ref(engine, self._gone(key)))
                    self._seen[key] = seen
                try:
                    stats = engine.stats()
                except PyEngineError:  # closed meanwhile: its last reading stands
                    continue
                seen.last = stats
                current.add(key)
                live[model.name] = stats
            for key in [k for k in self._seen if k not in current]:
                engine = self._seen[key].ref()
                if engine is not None:
                    with contextlib.suppress(PyEngineError):  # closed: keep the last one
                        self._seen[key].last = engine.stats()
                self._retire(key)
        return live

    def totals(self) -> dict[str, Counter[str]]:
        """Model name -> its engines' counters, unloaded ones included."""
        with self._lock:
            out = {name: Counter(c) for name, c in self._retired.items()}
            for seen in self._seen.values():
                out.setdefault(seen.name, Counter()).update(
                    {k: int(seen.last.get(k, 0)) for k in ENGINE_COUNTERS})
        return out

    def _retire(self, key: int) -> None:
        seen = self._seen.pop(key, None)
        if seen is not None:
            self._retired.setdefault(seen.name, Counter()).update(
                {k: int(seen.last.get(k, 0)) for k in ENGINE_COUNTERS})

    def _gone(self, key: int) -> Callable[[weakref.ReferenceType[Any]], None]:
        def callback(ref: weakref.ReferenceType[Any]) -> None:
            with self._lock:
                seen = self._seen.get(key)
                if seen is not None and seen.ref is ref:
                    self._retire(key)
        return callback


class Metrics:
    """What ``/metrics`` reports: HTTP counts kept here, the queue's, and the engines'."""

    def __init__(self, models: Any, queue: QueueLimit) -> None:
        self.models = models  # a ModelPool: .loaded() gives models with .name and .engine
        self.queue = queue
        self.ledger = EngineLedger()
        self.http_requests: Counter[tuple[str, str, str]] = Counter()
        self.http_in_flight = 0

    def observe_engines(self) -> dict[str, dict[str, int]]:
        """Reads the loaded engines now (see ``EngineLedger``)."""
        return self.ledger.observe(self.models.loaded())

    def count_request(self, method: str, route: str, status: int) -> None:
        """One HTTP request answered (or abandoned) with ``status``."""
        method = method if method in _METHODS else "other"
        self.http_requests[(method, route, str(status))] += 1

    def render(self) -> str:
        """The exposition text."""
        live = self.observe_engines()
        totals = self.ledger.totals()
        out = Exposition()
        out.family("pyengine_build_info", "gauge", "The server's version.",
                   [({"version": __version__}, 1)])
        out.family("pyengine_http_requests_total", "counter",
                   "HTTP requests answered, by method, route and status (499: the client left "
                   "before an answer).",
                   [({"method": m, "route": r, "status": s}, n)
                    for (m, r, s), n in sorted(self.http_requests.items())])
        out.family("pyengine_http_requests_in_flight", "gauge",
                   "HTTP requests being served now.", self.http_in_flight)
        out.family("pyengine_requests_in_flight", "gauge",
                   "Generation requests admitted and not yet fully answered.",
                   self.queue.active)
        out.family("pyengine_max_queue", "gauge",
                   "Generation requests admitted at most; more are refused with 503.",
                   self.queue.max_queue)
        out.family("pyengine_requests_rejected_total", "counter",
                   "Generation requests refused with 503 because the queue was full.",
                   self.queue.rejected)
        out.family("pyengine_requests_queued", "gauge",
                   "Sequences waiting for the engines' schedulers (queue depth), all models.",
                   sum(int(s.get("waiting", 0)) for s in live.values()))
        out.family("pyengine_models_loaded", "gauge", "Models in memory.", len(live))

        def per_model(key: str) -> list[Sample]:
            return [({"model": name}, c[key]) for name, c in sorted(totals.items())]

        out.family("pyengine_prompt_tokens_total", "counter",
                   "Prompt tokens run through the model, by model (prefix cache hits are not "
                   "run again; a preempted prompt is).", per_model("prompt_tokens"))
        out.family("pyengine_decode_tokens_total", "counter",
                   "Generated tokens run through the model, by model: all but the last of "
                   "each reply, which is sampled and not fed back.", per_model("decode_tokens"))
        out.family("pyengine_prefix_query_tokens_total", "counter",
                   "Prompt tokens looked up in the prefix cache, by model.",
                   per_model("prefix_query_tokens"))
        out.family("pyengine_prefix_hit_tokens_total", "counter",
                   "Prompt tokens found in the prefix cache, by model.",
                   per_model("prefix_hit_tokens"))
        out.family("pyengine_steps_total", "counter", "Batched engine steps, by model.",
                   per_model("steps"))
        out.family("pyengine_step_sequences_total", "counter",
                   "Sequences summed over engine steps, by model.", per_model("step_sequences"))
        out.family("pyengine_step_tokens_total", "counter",
                   "Tokens summed over engine steps, by model.", per_model("step_tokens"))
        out.family("pyengine_preemptions_total", "counter",
                   "Sequences preempted for want of KV cache, by model.",
                   per_model("preemptions"))
        out.family("pyengine_drafted_tokens_total", "counter",
                   "Speculative decoding's draft tokens scored, by model.", per_model("drafted"))
        out.family("pyengine_draft_accepted_tokens_total", "counter",
                   "Of those, the draft tokens kept (acceptance = accepted / drafted), by model.",
                   per_model("draft_accepted"))
        out.family("pyengine_kv_evictions_total", "counter",
                   "Cached KV blocks evicted, by model.", per_model("kv_evictions"))
        out.family("pyengine_sequences_ended_total", "counter",
                   "Sequences ended, by model and how.",
                   [({"model": name, "reason": reason}, c[reason])
                    for name, c in sorted(totals.items())
                    for reason in ("finished", "cancelled", "failed")])
        out.family("pyengine_batch_size_mean", "gauge",
                   "Mean sequences per engine step since the server started, by model.",
                   [({"model": name}, c["step_sequences"] / c["steps"] if c["steps"] else 0.0)
                    for name, c in sorted(totals.items())])

        models = sorted(live.items())
        out.family("pyengine_sequences", "gauge", "Sequences of a loaded model, by state.",
                   [({"model": name, "state": state}, int(s.get(state, 0)))
                    for name, s in models for state in ("running", "waiting")])
        out.family("pyengine_kv_pages", "gauge",
                   "KV cache pages of a loaded model, by state (used + free + cached = "
                   "capacity).",
                   [({"model": name, "state": state}, int(s.get(f"kv_pages_{state}", 0)))
                    for name, s in models for state in ("used", "free", "cached")])
        out.family("pyengine_kv_pages_capacity", "gauge", "KV cache pages of a loaded model.",
                   [({"model": name}, int(s.get("kv_pages_total", 0))) for name, s in models])
        out.family("pyengine_kv_page_bytes", "gauge", "Bytes of one KV cache page.",
                   [({"model": name}, int(s.get("kv_page_bytes", 0))) for name, s in models])
        out.family("pyengine_kv_bytes", "gauge", "KV cache bytes of a loaded model, by state.",
                   [({"model": name, "state": state},
                     int(s.get(f"kv_pages_{state}", 0)) * int(s.get("kv_page_bytes", 0)))
                    for name, s in models for state in ("used", "free", "cached")])
        out.family("pyengine_kv_capacity_bytes", "gauge", "KV cache bytes of a loaded model.",
                   [({"model": name},
                     int(s.get("kv_pages_total", 0)) * int(s.get("kv_page_bytes", 0)))
                    for name, s in models])
        out.family("pyengine_kv_blocks_cached", "gauge",
                   "Finished prompts' KV blocks kept for prefix reuse.",
                   [({"model": name}, int(s.get("kv_blocks_cached", 0))) for name, s in models])
        return out.text()


def route_label(scope: Scope) -> str:
    """The route template of the request (``/api/chat``), never a raw path a client made up.

    Requests refused before routing (401, 413, 503) have no route: the generation paths the
    queue limits keep their path, the others count as ``unmatched``.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    return scope["path"] if scope["path"] in GENERATION_PATHS else UNMATCHED


class MetricsMiddleware:
    """Counts every HTTP request by method, route and final status, and keeps the engine
    ledger current around generation responses."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        generation = scope["path"] in GENERATION_PATHS
        status: int | None = None

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if generation:
                    metrics.observe_engines()
            elif generation and message["type"] == "http.response.body" \
                    and not message.get("more_body", False):
                metrics.observe_engines()  # before the model may be unloaded
            await send(message)

        metrics.http_in_flight += 1
        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if status is None:
                status = 500  # what the server's error handler answers
            raise
        finally:
            metrics.http_in_flight -= 1
            metrics.count_request(scope["method"], route_label(scope),
                                  499 if status is None else status)


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    """The server's metrics in Prometheus' text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
