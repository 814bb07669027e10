"""Responses that end with their client: NDJSON streams and awaits that stop on disconnect.

A client that goes away must not keep the engine busy: the generation it started is cancelled
(closing ``Engine.astream`` frees its KV blocks). The ASGI ``receive`` channel reports the
disconnect; both helpers here watch it while they wait on the engine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _settle(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Awaits ``awaitable``; if the client disconnects first, cancels it and raises
    ``ClientDisconnected``. Call only after the request body has been read."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _settle(work, watcher)
        raise
    if work.done():
        await _settle(watcher)
        return work.result()
    await _settle(work)
    raise ClientDisconnected()


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON record: compact JSON and a newline."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class NDJSONResponse(Response):
    """Streams ``records`` (JSON objects) one line each, as Ollama streams its replies.

    When the client disconnects, the stream is cancelled and ``records`` closed at once,
    whatever the ASGI server's version of the disconnect protocol.
    """

    media_type = "application/x-ndjson"

    def __init__(self, records: AsyncIterator[Any], status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.records = records
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for record in self.records:
            await send({"type": "http.response.body", "body": ndjson_line(record),
                        "more_body": True})
            # Neither the send nor a stream with tokens ready suspends: yield to the loop so a
            # fast stream cannot starve other requests (or the disconnect watcher).
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _settle(streamer, watcher)
            aclose = getattr(self.records, "aclose", None)
            if aclose is not None:
                await aclose()
        if not streamer.cancelled() and streamer.exception() is not None:
            exc = streamer.exception()
            if not isinstance(exc, OSError):  # a failed send is a disconnect; others are bugs
                raise exc
