"""A stand-in for an Ollama server's ``/api/chat`` over real HTTP, for the fallback tests that
need a reply the real engine would not give on demand: a tool call. Streams one NDJSON record
per reply: a call of the request's first tool when it sends tools, else a fixed text. Keeps
the request bodies it received."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

CALL_ARGUMENTS = {"x": 4}


def fake_ollama(received: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/api/chat")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        received.append(body)
        message: dict[str, Any] = {"role": "assistant", "content": "upstream text"}
        if body.get("tools"):
            message = {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": body["tools"][0]["function"]["name"],
                              "arguments": CALL_ARGUMENTS}}]}
        record = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                  "message": message, "done": True, "done_reason": "stop",
                  "prompt_eval_count": 3, "eval_count": 5}
        return StreamingResponse(iter([json.dumps(record) + "\n"]),
                                 media_type="application/x-ndjson")

    return app
