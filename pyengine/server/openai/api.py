"""OpenAI's API, as Ollama offers it under ``/v1``: ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models`` and ``/v1/models/{model}``.

Requests are translated as Ollama's OpenAI layer translates them and run as ``/api/chat`` and
``/api/generate`` run (the same prompt format, options mapping, generation loop and
disconnect handling); replies and errors take OpenAI's shapes. Where Ollama and OpenAI differ,
this follows Ollama, which is what its clients expect of this server:

- sampling defaults are temperature 1.0 and top_p 1.0 (see ``openai_options``), and without
  ``max_tokens`` a reply runs until it ends or fills the context (OpenAI's legacy completions
  stop at 16 tokens);
- a ``/v1/completions`` prompt is a user turn of the model's chat format, as ``/api/generate``
  without ``raw`` would render it, not raw text;
- model ids are the served names (``gemma:latest``), ``created`` is the file's modification
  time and ``owned_by`` the name's namespace, ``library`` when it has none.

Streams are server-sent events: chat streams open with the assistant's role, then carry the
text, then a chunk with an empty delta and the ``finish_reason``; with
``stream_options.include_usage`` a chunk with the token counts (and no choices) follows; the
last event is ``[DONE]``. ``response_format`` (``json_object``, ``json_schema``) is enforced
while decoding (``pyengine.structured``). Things this engine cannot do (``n`` > 1, images,
tools, logprobs) are refused with a 400 rather than silently ignored. Models this server does
not run (or cannot) go to the fallback chain, as on Ollama's API.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pyengine.chat import format_chat, format_gemma
from pyengine.structured import GrammarError, grammar_text
from pyengine.structured.tools import CallFilter, ToolError, plan_chat, plan_prompt
from pyengine.engine import Completion, with_tool_calls
from pyengine.gateway.chain import Result
from pyengine.server.errors import APIError
from pyengine.pool import ModelEntry, ModelPool
from pyengine.server.generation import NO_IMAGES, run_generation
from pyengine.server.targets import (Target, lease_here, may_fall_back, run_fallback,
                                     stream_fallback)
from pyengine.server.targets import resolve as resolve_target
from pyengine.server.openai.errors import OpenAIError, OpenAIRoute, error_body, invalid
from pyengine.server.openai.options import max_tokens_of, sampling_options
from pyengine.server.openai.schemas import (ChatCompletionRequest, ChatMessage, CompletionRequest,
                                            parse_openai_body)
from pyengine.server.openai.sse import DONE, SSEResponse
from pyengine.server.streaming import NDJSONResponse

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

FINGERPRINT = "fp_pyengine"
_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for system instructions
_MEDIA_PARTS = {"image_url": NO_IMAGES, "input_image": NO_IMAGES,
                "input_audio": "this model does not support audio",
                "file": "this model does not support files"}


def _models(request: Request) -> ModelPool:
    return request.app.state.models


def _target(request: Request, name: str, prompt_chars: int = 0) -> Target:
    """Where a request for ``name`` goes: a model served here, or a tier name / ``auto``
    resolved by the tier router; what this server cannot run goes to the fallback chain."""
    if not name:
        raise invalid("you must provide a model parameter", param="model")
    return resolve_target(_models(request), request.app.state.config, name, None, prompt_chars)


def _openai_error(e: APIError) -> OpenAIError:
    code = "model_not_found" if e.status_code == 404 else None
    return OpenAIError(e.status_code, e.message, param="model", code=code)


async def _fallback(request: Request, target: Target, messages: list[dict[str, Any]],
                    options: dict[str, Any], reply: Reply, stream: bool) -> Response:
    """Serves a request this server cannot run through the fallback chain (as Ollama's API
    does), in OpenAI's shapes: one object, or events as the fallback produces them."""
    allowed = may_fall_back(request)
    state = request.app.state
    try:
        if not stream:
            r = await run_fallback(state, target, messages, options, allowed)
            return JSONResponse(reply.whole(_completion_of(r)))
        pieces = await stream_fallback(state, target, messages, options, allowed)
    except APIError as e:
        raise _openai_error(e) from None

    async def records() -> AsyncIterator[dict[str, Any]]:
        async for piece in pieces:
            yield {"completion": _completion_of(piece["result"])} if "result" in piece else piece

    async def closing() -> AsyncIterator[Any]:
        try:
            async for event in _events(reply, records()):
                yield event
        finally:
            await pieces.aclose()

    return SSEResponse(closing())


def _completion_of(r: Result) -> Completion:
    """A fallback's result as the engine's Completion (what the reply shapes read)."""
    return Completion(r.text, done_reason=r.done_reason, prompt_eval_count=r.prompt_tokens,
                      eval_count=r.completion_tokens, tool_calls=list(r.tool_calls))


# -- replies ------------------------------------------------------------------------------


def finish_reason(c: Completion) -> str:
    """OpenAI's ``finish_reason`` of a reply."""
    if c.tool_calls:
        return "tool_calls"
    return "length" if c.done_reason == "length" else "stop"


def tool_calls(c: Completion, delta: bool = False) -> list[dict[str, Any]]:
    """A reply's calls in OpenAI's shape (arguments as a JSON string; in a stream's delta,
    each with its index)."""
    out = []
    for i, call in enumerate(c.tool_calls):
        item = {"id": "call_" + secrets.token_hex(12), "type": "function",
                "function": {"name": call.name,
                             "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
        out.append({"index": i} | item if delta else item)
    return out


def usage(c: Completion) -> dict[str, Any]:
    """Token counts of a reply: ``prompt_tokens`` is the whole prompt, of which
    ``cached_tokens`` came from the prefix cache (OpenAI's meaning, and Ollama's)."""
    prompt = c.prompt_eval_count + c.cached_tokens
    return {"prompt_tokens": prompt, "completion_tokens": c.eval_count,
            "total_tokens": prompt + c.eval_count,
            "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}


@dataclass
class Reply:
    """The objects of one reply, chat (``chat.completion``) or text (``text_completion``):
    every chunk of a stream shares its ``id`` and ``created``."""

    chat: bool
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)

    def _object(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat \
            else "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
               "system_fingerprint": FINGERPRINT, "choices": choices}
        if chunk and self.include_usage:
            out["usage"] = None  # OpenAI: null on every chunk but the usage chunk
        return out

    def _choice(self, text: str, reason: str | None, chunk: bool,
                role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if not self.chat:
            choice["text"] = text
        elif chunk:
            choice["delta"] = ({"role": "assistant"} if role else {}) | \
                ({"content": text} if text or role else {})
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return choice | {"logprobs": None, "finish_reason": reason}

    def whole(self, c: Completion) -> dict[str, Any]:
        """The reply as one object."""
        choice = self._choice(c.text, finish_reason(c), False)
        if c.tool_calls:
            choice["message"] = {"role": "assistant", "content": None,
                                 "tool_calls": tool_calls(c)}
        return self._object([choice], False) | {"usage": usage(c)}

    def calls(self, c: Completion) -> dict[str, Any]:
        """The chunk carrying a streamed reply's tool calls (before the finishing chunk)."""
        return self._object([{"index": 0, "delta": {"tool_calls": tool_calls(c, delta=True)},
                              "logprobs": None, "finish_reason": None}], True)

    def start(self) -> dict[str, Any]:
        """A chat stream's first chunk: the assistant's role and no text yet."""
        return self._object([self._choice("", None, True, role=True)], True)

    def piece(self, text: str) -> dict[str, Any]:
        """A chunk of streamed text."""
        return self._object([self._choice(text, None, True)], True)

    def finish(self, c: Completion) -> dict[str, Any]:
        """The chunk with the ``finish_reason`` (and no text)."""
        return self._object([self._choice("", finish_reason(c), True)], True)

    def totals(self, c: Completion) -> dict[str, Any]:
        """The ``include_usage`` chunk: no choices, the token counts."""
        return self._object([], True) | {"usage": usage(c)}


async def _events(reply: Reply, records: AsyncIterator[dict[str, Any]]
                  ) -> AsyncIterator[Any]:
    # ``records`` come from the generation loop shared with Ollama's API: {"text"} pieces, then
    # {"completion"}, or {"error"} when the engine fails mid-stream. Closing this generator
    # closes them, which cancels the request if it is unfinished.
    try:
        if reply.chat:
            yield reply.start()
        async for record in records:
            if "error" in record:  # headers are sent: OpenAI's clients raise on this event
                yield error_body(500, record["error"])
                return
            if "completion" in record:
                if record["completion"].tool_calls:
                    yield reply.calls(record["completion"])
                yield reply.finish(record["completion"])
                if reply.include_usage:
                    yield reply.totals(record["completion"])
                yield DONE
                return
            yield reply.piece(record["text"])
    finally:
        aclose = getattr(records, "aclose", None)
        if aclose is not None:
            await aclose()


# The prompt of a request in a model's chat format (by its architecture) and the reply's
# format (None: the options' own).
Render = Callable[[str], tuple[str, Any]]


async def _complete(request: Request, target: Target, messages: list[dict[str, Any]],
                    render: Render, options: dict[str, Any], reply: Reply, stream: bool,
                    tools: bool = False, elsewhere: dict[str, Any] | None = None) -> Response:
    """Generates the reply to the prompt ``render`` gives for the leased model's architecture
    (``messages`` in its chat format) and answers as one object or a stream; what this server
    cannot run, the fallback chain answers (with ``elsewhere``: the options as they came,
    tools included, where they differ)."""
    lease = await lease_here(request.app.state, target)
    if lease is None:  # not served here, or the pool cannot run it now
        return await _fallback(request, target, messages, elsewhere or options, reply, stream)
    arch = lease.engine.arch
    try:
        text, fmt = render(arch)
    except ToolError as e:
        lease.release()
        raise invalid(str(e), param=e.param) from None
    except ValueError as e:
        lease.release()
        raise invalid(str(e), param="messages") from None
    if fmt is not None:
        options = {**options, "format": fmt}
    ids = lease.tokenize(text, True, invalid)
    t0 = time.perf_counter_ns()
    calling = CallFilter(tools, arch)

    def with_calls(c: Completion) -> Completion:
        return with_tool_calls(c, arch) if tools else c

    if not stream:
        return await run_generation(request, lease, ids, options, False, lambda _text: {},
                                    lambda _text, c, _ns: reply.whole(with_calls(c)), t0)
    response = await run_generation(request, lease, ids, options, True,
                                    lambda piece: calling.piece(piece, lambda t: {"text": t}),
                                    lambda _text, c, _ns: {"completion": with_calls(c)}, t0)
    if isinstance(response, NDJSONResponse):
        return SSEResponse(_events(reply, response.records))
    return response  # the client left before the first token


# -- chat completions ---------------------------------------------------------------------


def _message_text(i: int, message: ChatMessage) -> str:
    """A message's text: its string content, or its text parts joined by newlines into one
    turn (Ollama makes each part a message, which in Gemma's format would open a turn each)."""
    content = message.content
    if content is None:
        if message.role == "assistant":  # an earlier turn that only called tools or refused
            return ""
        raise invalid(f"messages[{i}]: content is required", param="messages")
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind in _MEDIA_PARTS:
            raise invalid(_MEDIA_PARTS[kind], param="messages")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise invalid(f"messages[{i}]: content parts must be "
                          '{"type": "text", "text": "..."}', param="messages")
        texts.append(part["text"])
    return "\n".join(texts)


def response_format(fmt: Any) -> Any:
    """The engine's format of OpenAI's ``response_format``: None for text, "json" for
    ``json_object``, the schema of ``json_schema`` (enforced whether ``strict`` or not); a 400
    naming what is wrong otherwise."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid("response_format must be an object", param="response_format")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        out: Any = "json"
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
            raise invalid("response_format.json_schema must be an object with a name",
                          param="response_format")
        out = spec.get("schema", {"type": "object"})
        if not isinstance(out, dict):
            raise invalid("response_format.json_schema.schema must be a JSON Schema object",
                          param="response_format")
    else:
        raise invalid(f"invalid response_format type {kind!r}", param="response_format")
    try:
        grammar_text(out)  # compiled here too, so a bad schema is a 400 before any work
    except GrammarError as e:
        raise invalid(str(e), param="response_format") from None
    return out


def _refuse_unsupported(req: ChatCompletionRequest) -> None:
    # Fields that ask for something this engine cannot do: refuse rather than ignore them.
    if req.functions:  # the deprecated form of tools
        raise invalid("'functions' is deprecated and not supported: use 'tools'",
                      param="functions")
    if req.logprobs:
        raise invalid("logprobs are not supported by this server", param="logprobs")
    if req.reasoning_effort not in (None, "", "none"):
        raise invalid(f'"{req.model}" does not support thinking', param="reasoning_effort")


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Replies to ``messages`` (``chat.completion``, or ``chat.completion.chunk`` events)."""
    req = await parse_openai_body(request, ChatCompletionRequest)
    target = _target(request, req.model, sum(len(str(m.content or "")) for m in req.messages))
    if not req.messages:
        raise invalid("'messages' must not be empty", param="messages")
    _refuse_unsupported(req)
    # max_completion_tokens replaces max_tokens in OpenAI's API; the newer name wins.
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    options = sampling_options(req, max_tokens_of(getattr(req, param), param))
    messages = [{"role": _ROLE_ALIASES.get(m.role, m.role), "content": _message_text(i, m)}
                | ({"tool_calls": m.tool_calls} if m.tool_calls else {})
                | ({"tool_call_id": m.tool_call_id} if m.tool_call_id else {})
                for i, m in enumerate(req.messages)]
    # Tool messages name the call they answer; the call names the tool.
    names = {c.get("id"): (c.get("function") or {}).get("name", "")
             for m in req.messages for c in (m.tool_calls or []) if isinstance(c, dict)}
    parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
    given_format = response_format(req.response_format)
    try:
        turns, fmt = plan_chat(messages, req.tools, req.tool_choice, parallel, given_format,
                               names)
    except ToolError as e:
        raise invalid(str(e), param=e.param) from None
    if fmt is not None:
        options["format"] = fmt
    try:
        format_gemma(turns)  # a bad message is a 400 before the model is loaded
    except ValueError as e:
        raise invalid(str(e), param="messages") from None

    def render(arch: str) -> tuple[str, Any]:
        return plan_prompt(messages, req.tools, req.tool_choice, parallel, given_format, names,
                           arch=arch)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    reply = Reply(chat=True, model=req.model, include_usage=include_usage)
    calls = bool(req.tools) and req.tool_choice != "none"
    # The fallback chain gets the messages and tools as they came (its backends have tool
    # formats of their own), the engine here the turns and the grammar.
    elsewhere = {k: v for k, v in options.items() if k != "format"}
    if calls:
        elsewhere["tools"] = req.tools
    elif fmt is not None:
        elsewhere["format"] = fmt
    return await _complete(request, target, messages if calls else turns, render, options,
                           reply, bool(req.stream), calls, elsewhere)


# -- completions --------------------------------------------------------------------------


@router.post("/completions")
async def completions(request: Request) -> Response:
    """Completes ``prompt`` (``text_completion`` objects, streamed as events or not)."""
    req = await parse_openai_body(request, CompletionRequest)
    target = _target(request, req.model, len(str(req.prompt)))
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise invalid("only a single string prompt is supported", param="prompt")
        prompt = prompt[0]
    if req.suffix:
        raise invalid(f'"{req.model}" does not support insert', param="suffix")
    if req.echo:
        raise invalid("'echo' is not supported by this server", param="echo")
    if req.best_of is not None and req.best_of != 1:
        raise invalid("only one choice per request is supported ('best_of' must be 1)",
                      param="best_of")
    if req.logprobs:
        raise invalid("logprobs are not supported by this server", param="logprobs")
    options = sampling_options(req, max_tokens_of(req.max_tokens, "max_tokens"))
    messages = [{"role": "user", "content": prompt}]
    format_gemma(messages)  # a bad prompt is a 400 before the model is loaded
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    reply = Reply(chat=False, model=req.model, include_usage=include_usage)
    return await _complete(request, target, messages,
                           lambda arch: (format_chat(messages, arch), None), options, reply,
                           bool(req.stream))


# -- models -------------------------------------------------------------------------------


def owned_by(name: str) -> str:
    """The namespace of ``[host/]namespace/model:tag``, ``library`` when there is none."""
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else "library"


def _model_object(model_id: str, entry: ModelEntry) -> dict[str, Any] | None:
    try:
        created = int(entry.path.stat().st_mtime)
    except OSError:  # the file is gone: the model cannot be served
        return None
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by(model_id)}


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model this server offers, loaded or not."""
    models = _models(request)
    data = [_model_object(e.name, e) for e in models.entries() if not models.unavailable(e.name)]
    return {"object": "list", "data": [m for m in data if m is not None]}


@router.get("/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    """One model, under the name it was asked for (as Ollama answers)."""
    target = _target(request, model)
    found = _model_object(model, target.entry) if target.entry is not None else None
    if found is None:
        raise OpenAIError(404, f'model "{model}" not found, try pulling it first',
                          param="model", code="model_not_found")
    return found
