"""Embeddings: Ollama's ``/api/embed`` (and the older ``/api/embeddings``) and OpenAI's
``/v1/embeddings``.

An embedding is the mean of the final normed hidden states over the input's tokens (BOS
included), as llama.cpp pools them, scaled to unit length as Ollama returns them. The inputs of
one request run concurrently, so the scheduler batches them. An input longer than the context
is cut to it when ``truncate`` is true (Ollama's default), refused otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, List, Optional, Union

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pyengine.errors import PyEngineError
from pyengine.server.errors import APIError, bad_request
from pyengine.server.keep_alive import parse_keep_alive
from pyengine.server.models import Lease, ModelNotFound, ModelSet
from pyengine.server.ollama.schemas import KeepAlive, _Body, parse_body

router = APIRouter()


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


async def _lease(request: Request, name: str, keep_alive: Any = None) -> Lease:
    models: ModelSet = request.app.state.models
    if not name:
        raise bad_request("model is required")
    try:
        models.resolve(name)
    except ModelNotFound as e:
        raise APIError(404, str(e)) from None
    try:
        ka = parse_keep_alive(keep_alive, models.keep_alive)
    except ValueError as e:
        raise bad_request(str(e)) from None
    try:
        return await models.acquire(name, ka)
    except (PyEngineError, OSError, ValueError) as e:
        raise APIError(500, f"failed to load model {name}: {e}") from None


def _ids(lease: Lease, item: str | list[int], truncate: bool) -> list[int]:
    eng = lease.engine
    ids = eng.tokenize(item) if isinstance(item, str) else list(item)
    if not ids:
        raise bad_request("input is empty")
    if len(ids) > eng.n_ctx:
        if not truncate:
            raise bad_request(f"input length ({len(ids)} tokens) exceeds the context length "
                              f"({eng.n_ctx})")
        ids = ids[: eng.n_ctx]
    return ids


async def _embed_all(lease: Lease, inputs: list[str | list[int]], truncate: bool,
                     dimensions: int | None) -> tuple[list[list[float]], int]:
    if dimensions is not None and not 0 < dimensions <= lease.engine.config["n_embd"]:
        raise bad_request(f"dimensions must be in [1, {lease.engine.config['n_embd']}]")
    id_lists = [_ids(lease, item, truncate) for item in inputs]
    try:
        vectors = await asyncio.gather(*(asyncio.to_thread(lease.engine.embed, ids)
                                         for ids in id_lists))
    except (PyEngineError, ValueError) as e:
        raise bad_request(str(e)) from None
    out = []
    for v in vectors:
        if dimensions is not None:  # cut, then back to unit length (as Ollama does)
            v = v[:dimensions]
            norm = float((v * v).sum()) ** 0.5
            v = v / norm if norm > 0 else v
        out.append([float(x) for x in v])
    return out, sum(len(ids) for ids in id_lists)


@router.post("/api/embed")
async def embed(request: Request) -> JSONResponse:
    t0 = time.perf_counter_ns()
    body = await parse_body(request, EmbedRequest)
    inputs: list[str | list[int]] = [body.input] if isinstance(body.input, str) else list(body.input)
    lease = await _lease(request, body.model, body.keep_alive)
    try:
        if not inputs:
            embeddings: list[list[float]] = []
            tokens = 0
        else:
            embeddings, tokens = await _embed_all(lease, inputs, body.truncate is not False,
                                                  body.dimensions)
    finally:
        lease.release()
    return JSONResponse({"model": body.model, "embeddings": embeddings,
                         "total_duration": time.perf_counter_ns() - t0,
                         "load_duration": lease.load_duration, "prompt_eval_count": tokens})


@router.post("/api/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    body = await parse_body(request, LegacyEmbedRequest)
    lease = await _lease(request, body.model, body.keep_alive)
    try:
        vectors = [] if not body.prompt else (await _embed_all(lease, [body.prompt], True, None))[0]
    finally:
        lease.release()
    return JSONResponse({"embedding": vectors[0] if vectors else []})


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request) -> JSONResponse:
    body = await parse_body(request, OpenAIEmbedRequest)
    if body.encoding_format not in (None, "float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'")
    raw = body.input
    if isinstance(raw, str):
        inputs: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [list(raw)]  # one list of token ids
    else:
        inputs = list(raw)  # strings or lists of token ids
    if not inputs:
        raise bad_request("input is empty")
    lease = await _lease(request, body.model)
    try:
        vectors, tokens = await _embed_all(lease, inputs, True, body.dimensions)
    finally:
        lease.release()
    def encode(v: list[float]) -> list[float] | str:
        # The official SDK asks for base64: little-endian float32 values.
        if body.encoding_format == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        return v

    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "embedding": encode(v), "index": i}
                 for i, v in enumerate(vectors)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
