"""The operational layer around the API: metrics, health, CORS, the token, admission limits.

``install_ops`` adds the ``/health`` and ``/metrics`` routes and the middleware, outermost
first: metrics (so every answer is counted, refusals included), CORS (so refusals carry CORS
headers and preflights are answered before anything else), the body limit (the body is read
before any refusal, so a client that sends it all before reading gets the answer rather than
a reset connection), the bearer token, then the queue limit (so only authorized requests with
a complete body take a place).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from pyengine.server.ops import health, limits, metrics
from pyengine.server.ops.security import (APIKeyMiddleware, cors_options, resolve_api_key,
                                          resolve_origins)


@dataclass(frozen=True)
class OpsSettings:
    """The settings ``install_ops`` applies, resolved from arguments and the environment."""

    max_queue: int
    origins: tuple[str, ...]
    api_key: str | None
    max_body_bytes: int

    @classmethod
    def resolve(cls, *, max_queue: int | None = None,
                origins: str | Sequence[str] | None = None, api_key: str | None = None,
                max_body_bytes: int | None = None,
                env: Mapping[str, str] | None = None) -> OpsSettings:
        """Arguments win; None falls back to the environment (``PYENGINE_MAX_QUEUE``, ...) and
        then to the defaults. ``origins`` add to the environment's and the defaults.
        Raises ``ValueError`` for bad values."""
        body = limits.DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
        if isinstance(body, bool) or not isinstance(body, int) or body < 1:
            raise ValueError(f"max_body_bytes must be a positive integer, got {body!r}")
        return cls(max_queue=limits.resolve_max_queue(max_queue, env),
                   origins=tuple(resolve_origins(origins, env)),
                   api_key=resolve_api_key(api_key, env), max_body_bytes=body)


def install_ops(app: FastAPI, settings: OpsSettings) -> None:
    """Adds the routes and middleware to ``app`` (whose ``state.models`` is its ``ModelPool``).

    ``app.state.metrics`` and ``app.state.ops_settings`` are set for the routes and for tests.
    """
    queue = limits.QueueLimit(settings.max_queue)
    app.state.metrics = metrics.Metrics(app.state.models, queue)
    app.state.ops_settings = settings
    app.include_router(health.router)
    app.include_router(metrics.router)
    # add_middleware puts each one outside those added before it.
    app.add_middleware(limits.QueueLimitMiddleware, limit=queue)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(limits.BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CORSMiddleware, **cors_options(settings.origins))
    app.add_middleware(metrics.MetricsMiddleware, metrics=app.state.metrics)
