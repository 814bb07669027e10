"""Request bodies of the Ollama API, type-checked as strictly as Ollama's Go decoder checks them.

Bodies are read whatever their ``Content-Type`` (``curl -d`` sends a form type), parsed as
JSON and validated here, so every malformed request gets a 400 with ``{"error": ...}``.
Fields Ollama defines but this engine cannot honour are typed (so wrong types still fail) and
rejected or ignored by the routes; unknown fields are ignored, as Go ignores them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from pyengine.server.errors import bad_request

M = TypeVar("M", bound=BaseModel)

KeepAlive = Optional[Union[float, str]]


class _Body(BaseModel):
    # strict: "5" is not a number and 1 is not a string, as for Go's encoding/json.
    model_config = ConfigDict(strict=True, extra="ignore")


class Message(_Body):
    """A chat message."""

    role: str
    content: Optional[str] = None
    images: Optional[List[str]] = None
    thinking: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_name: Optional[str] = None


class _Inference(_Body):
    model: str = ""
    options: Optional[Dict[str, Any]] = None
    stream: Optional[bool] = None
    keep_alive: KeepAlive = None
    format: Optional[Union[str, Dict[str, Any]]] = None
    think: Optional[Union[bool, str]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    truncate: Optional[bool] = None
    shift: Optional[bool] = None


class GenerateRequest(_Inference):
    """``POST /api/generate``."""

    prompt: str = ""
    suffix: str = ""
    system: Optional[str] = None
    template: Optional[str] = None
    context: Optional[List[int]] = None
    raw: bool = False
    images: Optional[List[str]] = None


class ChatRequest(_Inference):
    """``POST /api/chat``."""

    messages: List[Message] = []
    tools: Optional[List[Dict[str, Any]]] = None


class ShowRequest(_Body):
    """``POST /api/show`` (``name`` is the older spelling of ``model``)."""

    model: str = ""
    name: str = ""
    verbose: bool = False


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    # Unions add their member types to the location ("keep_alive.float"): leave them out.
    where = ".".join(str(p) for p in first.get("loc", ())
                     if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or "-" in p)))
    got = first.get("input")
    kind = type(got).__name__ if got is not None else "null"
    kind = {"str": "string", "int": "number", "float": "number", "dict": "object",
            "list": "array", "bool": "boolean"}.get(kind, kind)
    if first.get("type") == "missing":
        return f"missing field {where!r}"
    return f"invalid value for {where!r} ({kind}): {first.get('msg', 'invalid')}"


async def read_json(request: Request) -> Any:
    """The request body as JSON; 400 when it is empty or not JSON."""
    raw = await request.body()
    if not raw.strip():
        raise bad_request("missing request body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, too deep, too many digits
        raise bad_request(f"invalid JSON in request body: {e}") from None


async def parse_body(request: Request, schema: Type[M]) -> M:
    """The request body validated as ``schema``; 400 with a readable message otherwise."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise bad_request(_describe(e)) from None
