"""The Ray Serve application: N replicas of the HTTP server (``server.app.create_app``, each
with its own engines, batcher and KV cache) behind one ingress that speaks the same Ollama and
OpenAI APIs, routes by prompt prefix (``router``) and fails a request over to another replica
when its replica dies before answering.

``serve_replicas`` starts (or joins, with an address) a Ray cluster and serves until
interrupted; ``pyengine serve --replicas N`` calls it.
"""

# No `from __future__ import annotations`: FastAPI must see the ingress methods' real types.
import json
import os
import threading
import time
from typing import Any, AsyncIterator, List, Mapping, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from pyengine.cluster import metrics
from pyengine.cluster.asgi_bridge import call_asgi
from pyengine.cluster.prefix_keys import PrefixKeys
from pyengine.cluster.router import PrefixAwareRouter

# Headers that describe one hop's connection, not the request: never forwarded.
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
REPLICA_HEADER = "x-pyengine-replica"  # the replica process that answered (its pid)
BOARD = "pyengine-metrics-board"  # the named actor the replicas post their metrics to
PUSH_S = 2.0     # how often a replica posts its metrics
STALE_S = 10.0   # a replica silent this long (gone, or restarting) drops out of /metrics


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest metrics text of each replica: the ingress cannot address replicas one by one
    (Ray Serve routes its calls), so they post here."""

    def __init__(self) -> None:
        self._texts: dict = {}

    def post(self, replica: str, text: str) -> None:
        self._texts[replica] = (time.time(), text)

    def current(self, max_age_s: float) -> dict:
        now = time.time()
        return {r: text for r, (t, text) in self._texts.items() if now - t <= max_age_s}


def _board():
    return MetricsBoard.options(name=BOARD, get_if_exists=True).remote()


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=30,
                  graceful_shutdown_wait_loop_s=1, health_check_period_s=2,
                  health_check_timeout_s=10)
class Replica:
    """One server (its models load on first use, as in ``pyengine serve``)."""

    def __init__(self, models: Mapping[str, str], app_options: Mapping[str, Any]):
        from pyengine.server.app import create_app

        self._app = create_app(models, **app_options)
        self._pid = os.getpid()
        threading.Thread(target=self._post_metrics, name="pyengine-metrics", daemon=True).start()

    def _post_metrics(self) -> None:
        board = _board()
        while True:
            try:
                board.post.remote(str(self._pid), self._app.state.metrics.render())
            except Exception:  # noqa: BLE001 - metrics must never take a replica down
                pass
            time.sleep(PUSH_S)

    async def handle(self, method: str, path: str, query: bytes,
                     headers: List[Tuple[bytes, bytes]], body: bytes,
                     route_blocks: Optional[List[str]] = None) -> AsyncIterator[Any]:
        """The response: first {"status", "headers", "replica"}, then the body's chunks.
        ``route_blocks`` is for the router only."""
        async for m in call_asgi(self._app, method, path, query, headers, body):
            if m["type"] == "http.response.start":
                yield {"status": m["status"], "replica": self._pid,
                       "headers": [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in m.get("headers", [])]}
            elif m["type"] == "http.response.body" and m.get("body"):
                yield bytes(m["body"])


def _error_chunk(content_type: str, message: str) -> bytes:
    """How a stream that already started tells its client it broke: an SSE event for OpenAI's
    streams, an NDJSON line with "error" (as Ollama's streams do) otherwise."""
    if content_type.startswith("text/event-stream"):
        return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n".encode()
    return (json.dumps({"error": message}) + "\n").encode()


ingress_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(ingress_api)
class Ingress:
    def __init__(self, replicas: Any, models: Mapping[str, str]):
        self._replicas = replicas.options(stream=True)
        self._keys = PrefixKeys(models)
        self._failovers = 0
        self._failed = 0
        # Where each request's prefix went, kept here apart from the router's own state (Ray
        # runs the router on its own terms): the routing counters the cluster endpoint reports.
        self._routing = {"routed": 0, "keyed": 0, "prefix_hits": 0, "hit_blocks": 0}
        self._seen: dict = {}  # replica pid -> block hashes sent there (bounded)

    @ingress_api.get("/api/pyengine/cluster")
    async def cluster(self) -> dict:
        """The routing counters (requests routed, with a key, sent where their prefix was) and
        the failures seen: requests failed over to another replica, and requests lost."""
        return {"routing": dict(self._routing), "failovers": self._failovers,
                "failed": self._failed}

    @ingress_api.get("/metrics")
    async def cluster_metrics(self) -> PlainTextResponse:
        """Every replica's metrics, labelled by replica, and the routing counters."""
        texts = await _board().current.remote(STALE_S)
        return PlainTextResponse(metrics.merge(texts, self._routing, self._failovers, self._failed),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @ingress_api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
    async def forward(self, request: Request, path: str):
        body = await request.body()
        blocks = self._keys.blocks(request.url.path, body)
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _HOP]
        args = (request.method, request.url.path, request.url.query.encode(), headers, body)
        # A replica that dies before its answer starts (a whole non-streaming reply, or a
        # stream's first line) costs nothing the client saw: the request goes to another one.
        for attempt in range(2):
            gen = self._replicas.handle.remote(*args, route_blocks=blocks)
            try:
                start = await gen.__anext__()
                break
            except Exception as e:  # noqa: BLE001 - Ray's errors for a lost replica vary
                if attempt == 0:
                    self._failovers += 1
                    continue
                self._failed += 1
                return JSONResponse({"error": f"no replica could answer: {type(e).__name__}: {e}"},
                                    status_code=503)
        self._count(start["replica"], blocks)
        out_headers = {k: v for k, v in start["headers"] if k.lower() not in _HOP}
        out_headers[REPLICA_HEADER] = str(start["replica"])
        content_type = out_headers.get("content-type", "")

        async def rest() -> AsyncIterator[bytes]:
            try:
                async for chunk in gen:
                    yield chunk
            except Exception as e:  # noqa: BLE001 - the stream had started: tell the client
                self._failed += 1
                yield _error_chunk(content_type, f"the replica failed mid-stream: {type(e).__name__}")

        return StreamingResponse(rest(), status_code=start["status"], headers=out_headers)

    def _count(self, replica: int, blocks: List[str]) -> None:
        """A request with a key is a prefix hit when its replica had been sent its first
        block before; hit_blocks counts the leading blocks it had been sent."""
        self._routing["routed"] += 1
        if not blocks:
            return
        self._routing["keyed"] += 1
        seen = self._seen.setdefault(replica, set())
        n = 0
        for h in blocks:
            if h not in seen:
                break
            n += 1
        if n:
            self._routing["prefix_hits"] += 1
            self._routing["hit_blocks"] += n
        if len(seen) > 1_000_000:  # a bound, not an LRU: these are counters
            seen.clear()
        seen.update(blocks)


def build_app(models: Mapping[str, str], replicas: int, app_options: Mapping[str, Any],
              policy: str = "prefix", max_ongoing: int = 16):
    """The application: ``replicas`` servers of ``models`` behind the routing ingress.
    ``policy``: "prefix" (``router.PrefixAwareRouter``) or "default" (Ray Serve's own router,
    power of two choices, for comparison)."""
    options: dict = {"num_replicas": replicas, "max_ongoing_requests": max_ongoing}
    if policy == "prefix":
        options["request_router_config"] = RequestRouterConfig(request_router_class=PrefixAwareRouter)
    elif policy != "default":
        raise ValueError(f"policy must be 'prefix' or 'default', got {policy!r}")
    replica = Replica.options(**options)
    # The ingress only forwards: it holds as many requests as all the replicas together.
    ingress = Ingress.options(max_ongoing_requests=max(64, 4 * replicas * max_ongoing))
    return ingress.bind(replica.bind(dict(models), dict(app_options)), dict(models))


def serve_replicas(models: Mapping[str, Any], host: str, port: int,
                   replicas: int, ray_address: Optional[str] = None, policy: str = "prefix",
                   **app_options: Any) -> None:
    """Serves ``models`` from ``replicas`` replicas on ``host:port`` until interrupted."""
    import signal

    import ray

    def stop(_signum, _frame):  # SIGTERM drains and shuts down as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    models = {name: str(p) for name, p in models.items()}
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:  # a cluster of its own, even where another one runs on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(models, replicas, app_options, policy=policy), name="pyengine",
                  route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
