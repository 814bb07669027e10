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
from pyengine.cluster.prefix_keys import PrefixKeys, matched_blocks
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
        now = time.time()
        self._texts[replica] = (now, text)
        for r in [r for r, (t, _) in self._texts.items() if now - t > 6 * STALE_S]:
            del self._texts[r]  # a replica gone for good (its process was replaced)

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


class Placement:
    """Which served model a request runs: its "model" resolved through the tier router
    (``server.targets.resolve``) over the served models' metadata, no weights loaded."""

    def __init__(self, models: Mapping[str, str]):
        from pyengine.gateway.config import Config
        from pyengine.pool import ModelPool

        self._pool = ModelPool(models)
        self._config = Config.from_env()
        # The pool's own name of each model ("tiny" is "tiny:latest" there) -> the name given.
        self._given = {self._pool.resolve(m).name: m for m in models}

    def place(self, path: str, body: bytes) -> Tuple[Optional[str], bytes]:
        from pyengine.server.targets import resolve

        try:
            data = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            return None, body
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return None, body
        options = data.get("options") if isinstance(data.get("options"), dict) else None
        text = json.dumps(data.get("messages") or data.get("prompt") or "")
        try:
            target = resolve(self._pool, self._config, data["model"], dict(options or {}), len(text))
        except Exception:  # noqa: BLE001 - the replica gives the proper error for a bad request
            return None, body
        if target.entry is None:
            return None, body  # not served here: any replica runs the fallback chain
        served = self._given.get(target.entry.name, target.entry.name)
        if self._is_tier(data["model"]):  # the replica runs the model the tier resolved to
            data["model"] = served
            body = json.dumps(data).encode()
        return served, body

    @staticmethod
    def _is_tier(name: str) -> bool:
        from pyengine.server.targets import TIERS

        key = name.strip().lower()
        return key == "auto" or key in TIERS


ingress_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(ingress_api)
class Ingress:
    def __init__(self, deployments: Mapping[str, Any], models: Mapping[str, str]):
        # Served model name -> its deployment's handle ("*": one deployment serves them all).
        self._handles = {name: h.options(stream=True) for name, h in deployments.items()}
        self._default = next(iter(self._handles.values()))
        self._placement = Placement(models) if len(self._handles) > 1 else None
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
        handle, body = self._deployment_for(request.url.path, body)
        blocks = self._keys.blocks(request.url.path, body)
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _HOP]
        args = (request.method, request.url.path, request.url.query.encode(), headers, body)
        # A replica that dies before its answer starts (a whole non-streaming reply, or a
        # stream's first line) costs nothing the client saw: the request goes to another one.
        for attempt in range(2):
            gen = handle.handle.remote(*args, route_blocks=blocks)
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

    def _deployment_for(self, path: str, body: bytes) -> Tuple[Any, bytes]:
        """The deployment of the model a request runs, and the body to send it: a tier name or
        "auto" is resolved here as the server resolves it (the strategy's router picks the tier,
        Ray the replica), and the body then names the model, so the replica runs that one."""
        if self._placement is None:
            return self._default, body
        served, new_body = self._placement.place(path, body)
        return self._handles.get(served, self._default), new_body

    def _count(self, replica: int, blocks: List[str]) -> None:
        """A request with a key is a prefix hit when its replica had been sent its first
        block before; hit_blocks counts the leading blocks it had been sent."""
        self._routing["routed"] += 1
        if not blocks:
            return
        self._routing["keyed"] += 1
        seen = self._seen.setdefault(replica, set())
        n = matched_blocks(blocks, seen)
        if n:
            self._routing["prefix_hits"] += 1
            self._routing["hit_blocks"] += n
        if len(seen) > 1_000_000:  # a bound, not an LRU: these are counters
            seen.clear()
        seen.update(blocks)


def _deployment_name(model: str) -> str:
    return "model-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in model)


def build_app(models: Mapping[str, str], replicas: int, app_options: Mapping[str, Any],
              policy: str = "prefix", max_ongoing: int = 16,
              model_replicas: Optional[Mapping[str, int]] = None,
              autoscale: Optional[Tuple[int, int]] = None):
    """The application: servers of ``models`` behind the routing ingress.

    One model: one deployment of ``replicas`` servers. Several: a deployment per model (the
    strategy's tiers each get their own), of ``model_replicas[name]`` servers (a model name, or
    a tier name standing for its model; default ``replicas``), or between ``autoscale`` =
    (min, max) servers as Ray Serve's autoscaler sees their load.
    ``policy``: "prefix" (``router.PrefixAwareRouter``) or "default" (Ray Serve's own router,
    power of two choices, for comparison)."""
    if policy not in ("prefix", "default"):
        raise ValueError(f"policy must be 'prefix' or 'default', got {policy!r}")
    counts = _replica_counts(models, replicas, model_replicas or {})

    def deployment(name: str, served: Mapping[str, str], n: int):
        options: dict = {"name": name, "max_ongoing_requests": max_ongoing}
        if autoscale:
            lo, hi = autoscale
            options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                             "target_ongoing_requests": max_ongoing // 4}
        else:
            options["num_replicas"] = n
        if policy == "prefix":
            options["request_router_config"] = RequestRouterConfig(
                request_router_class=PrefixAwareRouter)
        return Replica.options(**options).bind(dict(served), dict(app_options))

    if len(models) <= 1:
        deployments = {"*": deployment("Replica", models, replicas)}
    else:
        deployments = {m: deployment(_deployment_name(m), {m: p}, counts[m])
                       for m, p in models.items()}
    total = sum(counts.values()) if len(models) > 1 else replicas
    if autoscale:
        total = autoscale[1] * max(1, len(models))
    # The ingress only forwards: it holds as many requests as all the replicas together.
    ingress = Ingress.options(max_ongoing_requests=max(64, 4 * total * max_ongoing))
    return ingress.bind(deployments, dict(models))


def _replica_counts(models: Mapping[str, str], replicas: int,
                    model_replicas: Mapping[str, int]) -> dict:
    """Replicas per served model; a tier name in ``model_replicas`` stands for its model."""
    from pyengine.gateway.config import Config
    from pyengine.gateway.routing import Tier, tier_model

    config = Config.from_env()
    counts = {m: replicas for m in models}
    for key, n in model_replicas.items():
        name = key
        if key.lower() in {t.value for t in Tier}:
            name = tier_model(Tier(key.lower()), config)
        match = [m for m in models if m in (name, f"{name}:latest", name.removesuffix(":latest"))]
        if not match:
            raise ValueError(f"--model-replicas: {key!r} is not a served model or a tier of one "
                             f"(served: {', '.join(models)})")
        if n < 1:
            raise ValueError(f"--model-replicas: {key} needs at least 1 replica, got {n}")
        counts[match[0]] = n
    return counts


def serve_replicas(models: Mapping[str, Any], host: str, port: int,
                   replicas: int, ray_address: Optional[str] = None, policy: str = "prefix",
                   model_replicas: Optional[Mapping[str, int]] = None,
                   autoscale: Optional[Tuple[int, int]] = None, **app_options: Any) -> None:
    """Serves ``models`` from ``replicas`` replicas on ``host:port`` until interrupted."""
    import signal

    import ray

    def stop(_signum, _frame):  # SIGTERM drains and shuts down as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    models = {name: str(p) for name, p in models.items()}
    _replica_counts(models, replicas, model_replicas or {})  # a bad count fails before Ray starts
    if autoscale and not 1 <= autoscale[0] <= autoscale[1]:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, got {autoscale[0]}:{autoscale[1]}")
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:  # a cluster of its own, even where another one runs on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(models, replicas, app_options, policy=policy,
                            model_replicas=model_replicas, autoscale=autoscale), name="pyengine",
                  route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
