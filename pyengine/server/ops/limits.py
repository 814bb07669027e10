"""Admission limits as ASGI middleware: a bounded number of generation requests (Ollama's
``OLLAMA_MAX_QUEUE``) and a bounded request body.

Both work on the raw ASGI messages, so they cover every router mounted on the app, including
ones added later, and they answer in the error shape of the API asked (``refusals``).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyengine.server.ops.refusals import send_error

log = logging.getLogger("pyengine.server")

DEFAULT_MAX_QUEUE = 512  # Ollama's default for OLLAMA_MAX_QUEUE
MAX_QUEUE_ENV = "PYENGINE_MAX_QUEUE"
OLLAMA_MAX_QUEUE_ENV = "OLLAMA_MAX_QUEUE"  # read when PYENGINE_MAX_QUEUE is not set
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
# A body over the limit is still read (and dropped) up to this many bytes, so that the client,
# which usually sends its whole body before reading, gets the 413 instead of a reset connection.
DRAIN_LIMIT_BYTES = 64 * 2**20

# Ollama's wording, two spaces included (server/sched.go, ErrMaxQueue), answered with 503.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

# The routes that run a model: only these count towards (and are refused by) the queue limit.
GENERATION_PATHS = frozenset({
    "/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
})


def resolve_max_queue(value: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """``value``, else ``PYENGINE_MAX_QUEUE``, else ``OLLAMA_MAX_QUEUE``, else 512.

    Raises ``ValueError`` for a bad ``value`` or ``PYENGINE_MAX_QUEUE``; a bad
    ``OLLAMA_MAX_QUEUE`` is logged and ignored, as Ollama does.
    """
    if value is None:
        env = os.environ if env is None else env
        # Ollama strips spaces and quotes from its variables.
        text = env.get(MAX_QUEUE_ENV, "").strip().strip("\"'")
        if text:
            value = _positive(text, MAX_QUEUE_ENV)
        else:
            text = env.get(OLLAMA_MAX_QUEUE_ENV, "").strip().strip("\"'")
            if not text:
                return DEFAULT_MAX_QUEUE
            try:
                return _positive(text, OLLAMA_MAX_QUEUE_ENV)
            except ValueError as e:
                log.warning("%s; using %d", e, DEFAULT_MAX_QUEUE)
                return DEFAULT_MAX_QUEUE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_queue must be a positive integer, got {value!r}")
    return value


def _positive(text: str, name: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return number


class QueueLimit:
    """How many generation requests are admitted now, and how many were refused."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.active = 0
        self.rejected = 0


class QueueLimitMiddleware:
    """Answers 503 (Ollama's "server busy") to a generation request when ``limit.max_queue`` are
    already in flight.

    A request counts from its admission until the last byte of its response is handed to the
    server, so a stream holds its place for as long as it streams. Ollama bounds only the
    requests waiting for its scheduler; this engine batches every admitted request at once, so
    the bound here is on all of them.
    """

    def __init__(self, app: ASGIApp, limit: QueueLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" \
                or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if limit.active >= limit.max_queue:
            limit.rejected += 1
            await send_error(scope, send, 503, BUSY_MESSAGE)
            return
        limit.active += 1  # no await since the check: admission is atomic on the event loop
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                limit.active -= 1

        async def send_and_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()  # an error, or a client gone before the end of the response


class BodyLimitMiddleware:
    """Reads each request body before the app runs, refusing one over ``max_bytes`` with 413.

    Reading first also means that a client that disconnects halfway through its body never
    reaches a route (there is nobody left to answer), and that the routes below get the
    body in one piece.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive integer, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, expects_continue = _declared(scope)
        if declared is not None and declared > self.max_bytes:
            # Refused without reading when the client waits for a go-ahead (curl does, for
            # large bodies) or declares more than the drain limit.
            if not expects_continue and declared <= DRAIN_LIMIT_BYTES \
                    and not await _drain(receive, DRAIN_LIMIT_BYTES):
                return
            await self._too_large(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.debug("client disconnected while sending %s %s", scope["method"],
                          scope["path"])
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False) \
                        and not await _drain(receive, DRAIN_LIMIT_BYTES - size):
                    return
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, which streaming routes watch for

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await send_error(scope, send, 413,
                         f"request body too large (the limit is {self.max_bytes} bytes)")


def _declared(scope: Scope) -> tuple[int | None, bool]:
    """The request's Content-Length (None if absent), and whether it expects 100-continue."""
    length, expects_continue = None, False
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                pass  # the HTTP server refuses these before the app sees them
        elif key == b"expect":
            expects_continue = value.strip().lower() == b"100-continue"
    return length, expects_continue


async def _drain(receive: Receive, budget: int) -> bool:
    """Reads and drops the rest of a body (at most ``budget`` bytes); False if the client left."""
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return True
