"""Request bodies of OpenAI's API (``/v1``), type-checked as strictly as Ollama's bodies.

Fields this server honours are typed; fields it cannot honour are typed too, so the routes can
refuse them when they ask for something (``tools``, ``response_format`` JSON, ``n`` > 1, ...)
and ignore them when they are harmless (``user``, an empty ``logit_bias``, ...). Unknown fields
are ignored, as OpenAI's newer fields should not break older servers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from pyengine.server.errors import APIError
from pyengine.server.openai.errors import invalid
from pyengine.server.ollama.schemas import _describe, read_json

M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    # Field types use typing's names: pydantic evaluates them, and Python 3.9 has no X | None.
    # strict: "5" is not a number and 1 is not a string (an int is still a valid float).
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: Optional[bool] = None


class ChatMessage(_Body):
    """A chat message: ``content`` is a string or a list of content parts."""

    role: str
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class SamplingFields(_Body):
    """Fields common to chat completions and completions."""

    model: str = ""
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    n: Optional[int] = None
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[List[Dict[str, Any]]] = None
    response_format: Optional[Dict[str, Any]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    reasoning_effort: Optional[str] = None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (``prompt``: a string, or a list holding one string)."""

    prompt: Union[str, List[Any]]
    suffix: Optional[str] = None
    echo: Optional[bool] = None
    best_of: Optional[int] = None
    logprobs: Optional[int] = None


async def parse_openai_body(request: Request, schema: type[M]) -> M:
    """The request body validated as ``schema``; an ``OpenAIError`` (400) naming the field at
    fault otherwise."""
    try:
        data = await read_json(request)
    except APIError as e:
        raise invalid(e.message) from None
    if not isinstance(data, dict):
        raise invalid(f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        loc = e.errors()[0].get("loc", ())
        raise invalid(_describe(e), param=str(loc[0]) if loc else None) from None
