"""What both generation APIs (Ollama's and OpenAI's) share once a request holds a lease on a
model this server runs (``targets.lease_here``): the generation loop that answers as a
stream of records or as one object (disconnects cancel the request; the completion goes into
the cost ledger). Each API shapes the records its own way (``piece`` and ``final``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncGenerator, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pyengine.engine import Chunk, Completion
from pyengine.errors import PyEngineError
from pyengine.pool import Lease
from pyengine.server.errors import APIError, bad_request
from pyengine.server.streaming import ClientDisconnected, NDJSONResponse, until_disconnect
from pyengine.server.targets import record_local

NO_IMAGES = "this model does not support images"

Piece = Callable[[str], "dict | None"]  # streamed text -> one record (None: none yet)
Final = Callable[[str, Completion, int], dict]  # text, completion, total ns -> last record


async def _records(first: Chunk, chunks: AsyncGenerator[Chunk, None], lease: Lease, piece: Piece,
                   final: Final, t0: int) -> AsyncIterator[dict]:
    try:
        chunk = first
        while True:
            if chunk.text:  # a token that ends inside a character adds no text yet
                record = piece(chunk.text)
                if record is not None:  # None: held back (a tool call's JSON)
                    yield record
            if chunk.done:
                assert chunk.completion is not None
                yield final("", chunk.completion, time.perf_counter_ns() - t0)
                return
            chunk = await chunks.__anext__()
    except PyEngineError as e:
        # Headers are sent: like Ollama, report the failure as the stream's last record.
        yield {"error": str(e)}
    finally:
        await chunks.aclose()  # cancels the request (and frees its KV blocks) if unfinished
        lease.release()


async def _rest(first: Chunk, chunks: AsyncGenerator[Chunk, None]) -> Completion:
    chunk = first
    while not chunk.done:
        chunk = await chunks.__anext__()
        await asyncio.sleep(0)  # ready tokens do not suspend: let other requests run
    assert chunk.completion is not None
    return chunk.completion


async def run_generation(request: Request, lease: Lease, ids: list[int], options: dict[str, Any],
               stream: bool, piece: Piece, final: Final, t0: int) -> Response:
    """Generates from ``ids`` and answers as a stream of records or as one object."""
    name, state = lease.model.name, request.app.state
    answer = final

    def final(text: str, c: Completion, total: int) -> dict:  # noqa: F811 (recorded, then shaped)
        record_local(state, name, c.prompt_eval_count + c.cached_tokens, c.eval_count)
        return answer(text, c, total)

    chunks = lease.engine.astream(ids, **options)
    try:
        # The first step submits the prompt: its errors (longer than the context, ...) are the
        # request's, and are answered with a status before any record is streamed.
        first = await until_disconnect(request, chunks.__anext__())
    except BaseException as e:
        await chunks.aclose()
        lease.release()
        if isinstance(e, ClientDisconnected):
            return Response(status_code=499)
        if isinstance(e, (PyEngineError, ValueError, TypeError)):
            raise bad_request(str(e)) from None
        raise
    if stream:
        return NDJSONResponse(_records(first, chunks, lease, piece, final, t0))
    try:
        completion = await until_disconnect(request, _rest(first, chunks))
    except ClientDisconnected:
        return Response(status_code=499)
    except PyEngineError as e:
        raise APIError(500, str(e)) from None
    finally:
        await chunks.aclose()
        lease.release()
    return JSONResponse(final(completion.text, completion, time.perf_counter_ns() - t0))
