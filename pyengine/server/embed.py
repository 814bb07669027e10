"""Embeddings: Ollama's ``/api/embed`` (and the older ``/api/embeddings``) and OpenAI's
``/v1/embeddings``, on the route generation and chat take (``targets``): tier names and
``auto`` resolve as there, and a model the server's pool cannot run goes to the fallback chain
(its native step, then the Ollama server at ``OLLAMA_HOST``; never a paid API), answered with
the same 404 or 503 when nothing serves it.

An embedding is the mean of the final normed hidden states over the input's tokens (BOS
included), as llama.cpp pools them, scaled to unit length as Ollama returns them. The inputs of
one request run concurrently, so the scheduler batches them. An input longer than the context
is cut to it when ``truncate`` is true (Ollama's default), refused otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Union

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pyengine.errors import PyEngineError
from pyengine.gateway.providers import context_ids
from pyengine.pool import Lease
from pyengine.server.errors import bad_request
from pyengine.server.keep_alive import parse_keep_alive
from pyengine.server.ollama.schemas import KeepAlive, _Body, parse_body
from pyengine.server.openai.errors import OpenAIRoute, invalid
from pyengine.server.targets import embed_fallback, lease_here, may_fall_back
from pyengine.server.targets import resolve as resolve_target

router = APIRouter()
# OpenAI's route answers its errors in OpenAI's shape, as the rest of /v1 does.
openai_router = APIRouter(prefix="/v1", route_class=OpenAIRoute)


class EmbedRequest(_Body):
    """``POST /api/embed``."""

    model: str = ""
    input: Union[str, List[str]] = ""
    truncate: Optional[bool] = None
    options: Optional[dict] = None
    keep_alive: KeepAlive = None
    dimensions: Optional[int] = None


class LegacyEmbedRequest(_Body):
    """``POST /api/embeddings`` (one prompt, unnormalised in old Ollama; normalised here too)."""

    model: str = ""
    prompt: str = ""
    options: Optional[dict] = None
    keep_alive: KeepAlive = None


class OpenAIEmbedRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str = ""
    input: Union[str, List[str], List[int], List[List[int]]] = ""
    encoding_format: Optional[str] = None
    dimensions: Optional[int] = None
    user: Optional[str] = None


@dataclass
class Embedded:
    """A request's embeddings, wherever they were made: one vector per input, the input
    tokens, and the time spent waiting for the model here (0 when the fallback chain made them)."""

    vectors: list[list[float]]
    tokens: int
    load_duration: int = 0


def _cut(v: np.ndarray, dimensions: int | None) -> list[float]:
    if dimensions is not None:  # cut, then back to unit length (as Ollama does)
        v = v[:dimensions]
        norm = float((v * v).sum()) ** 0.5
        v = v / norm if norm > 0 else v
    return [float(x) for x in v]


def _check_dimensions(dimensions: int | None, n_embd: int) -> None:
    if dimensions is not None and not 0 < dimensions <= n_embd:
        raise bad_request(f"dimensions must be in [1, {n_embd}]")


async def _embed_here(lease: Lease, inputs: list[str | list[int]], truncate: bool,
                      dimensions: int | None) -> Embedded:
    eng = lease.engine
    _check_dimensions(dimensions, eng.config["n_embd"])
    try:
        id_lists = [context_ids(eng, item, truncate) for item in inputs]
        vectors = await asyncio.gather(*(asyncio.to_thread(eng.embed, ids) for ids in id_lists))
    except (PyEngineError, ValueError) as e:
        raise bad_request(str(e)) from None
    return Embedded([_cut(v, dimensions) for v in vectors], sum(len(ids) for ids in id_lists),
                    lease.load_duration)


async def _embed(request: Request, name: str, inputs: list[str | list[int]], truncate: bool,
                 dimensions: int | None = None, keep_alive: Any = None,
                 options: dict | None = None) -> Embedded:
    """The route generation and chat take: ``name`` resolved (a model served here, a tier,
    ``auto`` with the task hints in ``options``), embedded here when the pool can run it, by
    the fallback chain (its native step, then Ollama) otherwise."""
    state = request.app.state
    chars = sum(len(item) for item in inputs if isinstance(item, str))
    target = resolve_target(state.models, state.config, name,
                            dict(options) if isinstance(options, dict) else None, chars)
    try:
        ka = parse_keep_alive(keep_alive, state.models.keep_alive)
    except ValueError as e:
        raise bad_request(str(e)) from None
    lease = await lease_here(state, target, ka)
    if lease is None:
        allowed = may_fall_back(request)
        r = await embed_fallback(state, target, inputs, truncate, allowed)
        if r.vectors:
            _check_dimensions(dimensions, len(r.vectors[0]))
        return Embedded([_cut(np.asarray(v, dtype=np.float64), dimensions) for v in r.vectors],
                        r.prompt_tokens)
    try:
        return await _embed_here(lease, inputs, truncate, dimensions)
    finally:
        lease.release()


@router.post("/api/embed")
async def embed(request: Request) -> JSONResponse:
    t0 = time.perf_counter_ns()
    body = await parse_body(request, EmbedRequest)
    inputs: list[str | list[int]] = [body.input] if isinstance(body.input, str) \
        else list(body.input)
    out = await _embed(request, body.model, inputs, body.truncate is not False, body.dimensions,
                       body.keep_alive, body.options)
    return JSONResponse({"model": body.model, "embeddings": out.vectors,
                         "total_duration": time.perf_counter_ns() - t0,
                         "load_duration": out.load_duration, "prompt_eval_count": out.tokens})


@router.post("/api/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    body = await parse_body(request, LegacyEmbedRequest)
    out = await _embed(request, body.model, [body.prompt] if body.prompt else [], True,
                       keep_alive=body.keep_alive, options=body.options)
    return JSONResponse({"embedding": out.vectors[0] if out.vectors else []})


@openai_router.post("/embeddings")
async def openai_embeddings(request: Request) -> JSONResponse:
    body = await parse_body(request, OpenAIEmbedRequest)
    if body.encoding_format not in (None, "float", "base64"):
        raise invalid("encoding_format must be 'float' or 'base64'", param="encoding_format")
    raw = body.input
    if isinstance(raw, str):
        inputs: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [list(raw)]  # one list of token ids
    else:
        inputs = list(raw)  # strings or lists of token ids
    if not inputs:
        raise invalid("input is empty", param="input")
    out = await _embed(request, body.model, inputs, True, body.dimensions)

    def encode(v: list[float]) -> list[float] | str:
        # The official SDK asks for base64: little-endian float32 values.
        if body.encoding_format == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        return v

    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "embedding": encode(v), "index": i}
                 for i, v in enumerate(out.vectors)],
        "model": body.model,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    })
