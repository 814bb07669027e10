"""Server-sent events, as OpenAI streams its replies: ``data: {json}\\n\\n`` per event and
``data: [DONE]\\n\\n`` at the end.

``SSEResponse`` is ``NDJSONResponse`` with another framing, so it inherits its disconnect
handling: a client that goes away cancels the stream and closes its events (and with them the
engine's request, freeing its KV blocks).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Send

from pyengine.server.streaming import NDJSONResponse

DONE = "[DONE]"  # the last event of an OpenAI stream, sent as is rather than as JSON


def sse_event(data: Any) -> bytes:
    """One ``data:`` event: compact JSON (or ``DONE`` verbatim) and the blank line ending it."""
    text = data if data == DONE else json.dumps(data, ensure_ascii=False,
                                                separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class SSEResponse(NDJSONResponse):
    """Streams ``events`` (JSON objects, or ``DONE``) as server-sent events."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[Any], status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        # Proxies must neither cache nor buffer a stream read as it is written.
        super().__init__(events, status_code,
                         {"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                          **(headers or {})})

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for event in self.records:
            await send({"type": "http.response.body", "body": sse_event(event),
                        "more_body": True})
            await asyncio.sleep(0)  # as NDJSONResponse: a fast stream must not starve the loop
        await send({"type": "http.response.body", "body": b"", "more_body": False})
