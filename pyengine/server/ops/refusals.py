"""Answers given by middleware before any route runs (401, 413, 503), in the error shape of
the API the client called."""

from __future__ import annotations

import json
from typing import Any, Mapping

from starlette.types import Scope, Send

from pyengine.server.openai.errors import error_body as openai_error_body


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object under ``/v1`` (as Ollama's OpenAI layer answers), so OpenAI
    clients raise their typed errors; Ollama's ``{"error": message}`` elsewhere."""
    if path == "/v1" or path.startswith("/v1/"):
        return openai_error_body(status, message, code={401: "invalid_api_key"}.get(status))
    return {"error": message}


async def send_error(scope: Scope, send: Send, status: int, message: str,
                     headers: Mapping[str, str] | None = None) -> None:
    """Answers ``status`` with ``error_body`` straight through ASGI."""
    body = json.dumps(error_body(scope["path"], status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
