"""The FastAPI application: a ``ModelPool`` and the routers that serve it."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping, Sequence

from fastapi import FastAPI

from pyengine import __version__
from pyengine.gateway.config import Config
from pyengine.model_check import unsupported_reason
from pyengine.pool import DEFAULT_MAX_LOADED, ModelPool
from pyengine.server import embed as embed_api
from pyengine.server.ollama import api as ollama_api
from pyengine.server.openai import api as openai_api
from pyengine.server.errors import install_error_handlers
from pyengine.server.keep_alive import DEFAULT_KEEP_ALIVE, parse_keep_alive
from pyengine.server.ops.install import OpsSettings, install_ops


def create_app(models: Mapping[str, str | os.PathLike[str]], *, n_threads: int | None = None,
               n_ctx: int = 4096, kv_cache_mb: float | None = None,
               max_loaded: int = DEFAULT_MAX_LOADED,
               keep_alive: float | str = DEFAULT_KEEP_ALIVE,
               engine_options: Mapping[str, Any] | None = None,
               config: Config | None = None, fallback: bool = True,
               max_queue: int | None = None, origins: str | Sequence[str] | None = None,
               api_key: str | None = None, max_body_bytes: int | None = None) -> FastAPI:
    """An Ollama-compatible server of ``models`` (name -> GGUF path).

    Models load on their first request (``Engine(path, n_threads=..., n_ctx=...,
    kv_cache_mb=..., **engine_options)``), at most ``max_loaded`` at once, and unload after
    ``keep_alive`` (seconds or a duration such as ``"5m"``; negative: never) without requests
    unless a request says otherwise. The ``ModelPool`` is ``app.state.models``: further routers
    (OpenAI's API, embeddings, metrics) serve the same models through it, and it is the native
    step of the fallback chain too. Engines close on shutdown.
    ``max_queue``, ``origins``, ``api_key`` and ``max_body_bytes`` bound and guard the API
    (``OpsSettings.resolve``: None reads ``PYENGINE_MAX_QUEUE``, ``PYENGINE_ORIGINS``,
    ``PYENGINE_API_KEY`` or Ollama's variables); ``/health`` and ``/metrics`` are served too.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for bad settings.
    """
    ops = OpsSettings.resolve(max_queue=max_queue, origins=origins, api_key=api_key,
                              max_body_bytes=max_body_bytes)
    options = {"n_threads": n_threads, "n_ctx": n_ctx, "kv_cache_mb": kv_cache_mb,
               **(engine_options or {})}
    model_set = ModelPool(models, max_loaded=max_loaded,
                          keep_alive=parse_keep_alive(keep_alive, DEFAULT_KEEP_ALIVE),
                          engine_options=options)
    # Each model's metadata, read once now: one that cannot run here is reported at start and
    # never offered or loaded; its requests go to the fallback chain.
    model_set.check(unsupported_reason)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await model_set.aclose()
            if app.state.ledger is not None:
                app.state.ledger.close()

    # No generated docs pages: the API is Ollama's, documented by Ollama.
    app = FastAPI(title="pyengine", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.models = model_set
    # Tiers and "auto" resolve through the router with this configuration; models the pool
    # cannot run go to the fallback chain (the pool, Ollama at OLLAMA_HOST, then paid APIs if
    # enabled), created on first use so that a server that never falls back opens no ledger.
    app.state.config = config or Config.from_env()
    app.state.fallback = fallback
    app.state.chain = None
    app.state.ledger = None  # the cost ledger, opened when the first call is recorded
    install_error_handlers(app)
    app.include_router(ollama_api.router)
    app.include_router(embed_api.router)
    app.include_router(embed_api.openai_router)
    app.include_router(openai_api.router)
    install_ops(app, ops)
    return app
