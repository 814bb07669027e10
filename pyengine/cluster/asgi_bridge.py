"""One HTTP request run through an ASGI application in this process, its response streamed out
as it is sent: the replicas run the server's own application (``server.app.create_app``)
this way, so the cluster serves exactly what ``pyengine serve`` serves, streaming included."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator


async def call_asgi(app: Any, method: str, path: str, query: bytes,
                    headers: list[tuple[bytes, bytes]], body: bytes) -> AsyncIterator[dict]:
    """Yields the response's ASGI messages: ``http.response.start`` (status, headers) first,
    then ``http.response.body`` chunks until one without ``more_body``. When the consumer
    stops early (a client gone), the request sees ``http.disconnect``."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    sent: asyncio.Queue = asyncio.Queue()
    request_done = asyncio.Event()
    body_given = False

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await request_done.wait()  # the response is over, or the consumer left
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await sent.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _t: sent.put_nowait(None))
    try:
        while True:
            message = await sent.get()
            if message is None:  # the application returned (or raised) without finishing
                if task.exception() is not None:
                    raise task.exception()
                return
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body"):
                return
    finally:
        request_done.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the request is over
                task.cancel()
