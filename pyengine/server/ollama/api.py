"""Ollama's native API: ``/``, ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/generate`` and ``/api/chat``, with Ollama's field names, defaults and errors.

Generation streams NDJSON by default (``"stream": false`` answers one object); the last record
has ``done: true``, ``done_reason`` and the timings in nanoseconds. Prompts are built and
tokenized on the event loop (quick native calls); tokens are awaited through
``Engine.astream``, so the loop never blocks, and a client that disconnects cancels its
request. ``/api/pyengine/stats`` adds the engines' scheduler and KV cache counters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from pyengine import __version__
from pyengine.chat import format_chat, format_gemma
from pyengine.engine import Completion
from pyengine.errors import PyEngineError
from pyengine.gateway.chain import Result
from pyengine.server.errors import APIError, bad_request, log
from pyengine.structured import GrammarError, grammar_text
from pyengine.structured.tools import CallFilter, ToolCall, ToolError, plan_chat, plan_prompt
from pyengine.server.keep_alive import parse_keep_alive
from pyengine.server.model_info import model_facts
from pyengine.pool import Lease, ModelEntry, ModelNotFound, ModelPool
from pyengine.server.ollama.options import engine_options
from pyengine.server.ollama.schemas import ChatRequest, GenerateRequest, ShowRequest, parse_body
from pyengine.server.streaming import NDJSONResponse
from pyengine.server.generation import NO_IMAGES, run_generation
from pyengine.server.targets import (Target, lease_here, may_fall_back, not_loaded,
                                     run_fallback, stream_fallback)
from pyengine.server.targets import resolve as resolve_target
from pyengine.server.ollama.template import SHOWN, SHOWN_DEFAULT, TemplateError, render
from pyengine.server.timestamps import after, rfc3339, utc_now

router = APIRouter()

def _stop_parameter(stop: str) -> str:
    """A stop parameter as Ollama's /api/show lists parameters (name padded to 31 columns)."""
    return f'{"stop":<31}"{stop}"'



def _models(request: Request) -> ModelPool:
    return request.app.state.models


def _target(request: Request, name: str, options: dict[str, Any] | None, prompt_chars: int,
            keep_alive: Any) -> tuple[Target, dict[str, Any] | None, float]:
    """The request's target (a served model, a tier, ``auto``), its options without the task
    hints, and how long the model stays loaded after it (seconds)."""
    opts = dict(options) if isinstance(options, dict) else options
    target = resolve_target(_models(request), request.app.state.config, name, opts, prompt_chars)
    return target, opts, _keep_alive(_models(request), keep_alive)


def _fallback_stats(r: Result, t0: int) -> dict[str, Any]:
    total = time.perf_counter_ns() - t0
    # The backend's own timings are not known here: the whole call counts as evaluation.
    return {"done_reason": r.done_reason, "total_duration": total, "load_duration": 0,
            "prompt_eval_count": r.prompt_tokens, "prompt_eval_duration": 0,
            "eval_count": r.completion_tokens, "eval_duration": total,
            "pyengine": {"backend": r.backend, "model": r.model, "tier": r.tier,
                         "cost_usd": r.cost_usd, "reason": r.reason}}


async def _fallback(request: Request, target: Target, messages: list[dict[str, Any]],
                    options: dict[str, Any], stream: bool, record: Callable[..., dict],
                    t0: int) -> Response:
    """Serves a request this server cannot run through the fallback chain, answering in the
    same shape: streamed as the fallback produces it, or as one object."""
    allowed = may_fall_back(request)
    state = request.app.state
    if not stream:
        r = await run_fallback(state, target, messages, options, allowed)
        return JSONResponse(record(r.text, True, **_calls(r), **_fallback_stats(r, t0)))
    pieces = await stream_fallback(state, target, messages, options, allowed)

    async def records() -> AsyncIterator[dict]:
        try:
            async for piece in pieces:
                if "text" in piece:
                    yield record(piece["text"], False)
                elif "result" in piece:
                    yield record("", True, **_calls(piece["result"]),
                                 **_fallback_stats(piece["result"], t0))
                else:  # the fallback failed mid-stream: Ollama's last-record error
                    yield {"error": piece["error"]}
        finally:
            await pieces.aclose()

    return NDJSONResponse(records())


def _calls(r: Result) -> dict[str, Any]:
    # Only chat replies carry calls (the generate records take no such argument).
    return {"calls": r.tool_calls} if r.tool_calls else {}


def _resolve(models: ModelPool, name: str) -> ModelEntry:
    if not name:
        raise bad_request("model is required")
    try:
        return models.resolve(name)
    except ModelNotFound as e:
        raise APIError(404, str(e)) from None


def _keep_alive(models: ModelPool, value: Any) -> float:
    try:
        return parse_keep_alive(value, models.keep_alive)
    except ValueError as e:
        raise bad_request(str(e)) from None


def _options(options: dict[str, Any] | None, fmt: Any = None) -> dict[str, Any]:
    """The engine's options of a request: its Ollama ``options`` and its ``format`` ("json" or
    a JSON Schema; "" or none for free text), each checked (a 400 naming what is wrong)."""
    try:
        out = engine_options(options)
    except ValueError as e:
        raise bad_request(str(e)) from None
    if fmt not in (None, ""):
        if not isinstance(fmt, (str, dict)):
            raise bad_request('format must be "json" or a JSON Schema object')
        try:
            grammar_text(fmt)  # compiled here too, so a bad schema is a 400 before any work
        except GrammarError as e:
            raise bad_request(str(e)) from None
        out["format"] = fmt
    return out


def _tool_fields(m: Any) -> dict[str, Any]:
    """A message's tool fields: an assistant's calls, a tool result's tool name."""
    out: dict[str, Any] = {}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_name:
        out["tool_name"] = m.tool_name
    return out


def _rendered(lease: Lease, render: Callable[[], Any]) -> Any:
    """``render()`` (a prompt in the leased model's chat format); what it refuses is a 400,
    the lease released first."""
    try:
        return render()
    except (ToolError, ValueError) as e:
        lease.release()
        raise bad_request(str(e)) from None


def _unsupported(model: str, *, think: Any, logprobs: bool | None) -> None:
    # Fields Ollama honours that this engine cannot: refuse rather than silently ignore.
    if think not in (None, False, "", "false"):
        raise bad_request(f'"{model}" does not support thinking')
    if logprobs:
        raise bad_request("logprobs are not supported by this server")


def _stats(c: Completion, total: int, load: int) -> dict[str, int]:
    # As Ollama reports it since its prompt cache: prompt_eval_count is the whole prompt,
    # whether its keys and values were computed or came from the prefix cache (caching must
    # not change what a client sees); the duration is the time spent on the computed part.
    return {"total_duration": int(total), "load_duration": int(load),
            "prompt_eval_count": int(c.prompt_eval_count + c.cached_tokens),
            "prompt_eval_duration": int(c.prompt_eval_duration),
            "eval_count": int(c.eval_count), "eval_duration": int(c.eval_duration)}


# -- routes -------------------------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    """Ollama's liveness answer."""
    return PlainTextResponse("Ollama is running")


# The Ollama release whose API this server speaks (Gemma 3 arrived in 0.6.0). Clients read
# "version" as Ollama's own and gate features on it, so pyengine's version goes in its own field.
OLLAMA_API_VERSION = "0.6.0"


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> dict[str, str]:
    """The Ollama API level served, and pyengine's own version."""
    return {"version": OLLAMA_API_VERSION, "pyengine_version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Every model this server offers, loaded or not."""
    out = []
    models = _models(request)
    for entry in models.entries():
        if models.unavailable(entry.name):  # reported at start; its requests go elsewhere
            continue
        try:
            facts = await asyncio.to_thread(model_facts, entry.path)
        except (PyEngineError, OSError) as e:  # a broken file must not hide the others
            log.warning("cannot read %s: %s", entry.path, e)
            continue
        out.append({"name": entry.name, "model": entry.name,
                    "modified_at": rfc3339(facts.modified_at), "size": facts.size,
                    "digest": facts.digest, "details": facts.details()})
    return {"models": out}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The models in memory, the longest to stay first."""
    def expires_at(loaded: Any) -> Any:
        return after(loaded.keep_alive, loaded.touched_at)

    out = []
    for loaded in sorted(_models(request).loaded(), key=expires_at, reverse=True):
        try:
            s = loaded.engine.stats()
            facts = await asyncio.to_thread(model_facts, loaded.entry.path)
        except (PyEngineError, OSError):  # unloaded meanwhile, or its file is gone
            continue
        kv_bytes = int(s.get("kv_pages_total", 0)) * int(s.get("kv_page_bytes", 0))
        out.append({"name": loaded.name, "model": loaded.name, "size": facts.size + kv_bytes,
                    "digest": facts.digest, "details": facts.details(),
                    "expires_at": rfc3339(expires_at(loaded)), "size_vram": 0,
                    "context_length": loaded.engine.n_ctx})
    return {"models": out}


@router.get("/api/pyengine/stats")
async def engine_stats(request: Request) -> dict[str, Any]:
    """Scheduler and KV cache counters of each loaded model (``Engine.stats``)."""
    return {m.name: m.engine.stats() for m in _models(request).loaded()}


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    """A model's details, GGUF metadata, template and parameters."""
    req = await parse_body(request, ShowRequest)
    entry = _resolve(_models(request), req.model or req.name)
    try:
        facts = await asyncio.to_thread(model_facts, entry.path)
        info = await asyncio.to_thread(facts.model_info, req.verbose)
    except (PyEngineError, OSError) as e:
        raise APIError(500, str(e)) from None
    details = facts.details()
    template, stop = SHOWN.get(details.get("family", ""), SHOWN_DEFAULT)
    modelfile = (f'# Modelfile generated by "pyengine"\nFROM {entry.path}\n'
                 f'TEMPLATE """{template}"""\nPARAMETER stop "{stop}"\n')
    return {"modelfile": modelfile, "parameters": _stop_parameter(stop), "template": template,
            "details": details, "model_info": info, "capabilities": ["completion"],
            "modified_at": rfc3339(facts.modified_at)}


async def _elsewhere_or_unload(request: Request, target: Target, has_input: bool, unload: bool,
                               messages: list[dict[str, Any]], options: dict[str, Any],
                               stream: bool, record: Callable[..., dict[str, Any]],
                               t0: int) -> Response | None:
    """The reply when nothing is generated here: the fallback chain's for a model this server
    does not run (Ollama's 404 when there is no input), the unload's record for a request that
    only unloads the model; None otherwise."""
    if target.entry is None:
        if not has_input:
            raise APIError(404, str(ModelNotFound(target.model)))
        return await _fallback(request, target, messages, options, stream, record, t0)
    if unload and not has_input:
        await _models(request).aunload(target.entry.name)
        return JSONResponse(record("", True, done_reason="unload"))
    return None


async def _lease_or_reply(request: Request, target: Target, keep_alive: float, has_input: bool,
                          messages: list[dict[str, Any]], options: dict[str, Any], stream: bool,
                          record: Callable[..., dict[str, Any]], t0: int) -> Lease | Response:
    """The lease on the model, or the whole reply when there is nothing to generate here: the
    fallback chain's when the pool cannot run the model now (as for a model not served here),
    a load's record when the request has no input (it only loads the model)."""
    lease = await lease_here(request.app.state, target, keep_alive)
    if lease is None:
        if not has_input:
            raise not_loaded(target)
        return await _fallback(request, target, messages, options, stream, record, t0)
    if not has_input:
        lease.release()
        return JSONResponse(record("", True, done_reason="load"))
    return lease


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    """Completes ``prompt`` (in the Gemma chat format unless ``raw`` or ``template``)."""
    t0 = time.perf_counter_ns()
    req = await parse_body(request, GenerateRequest)
    target, req_options, keep_alive = _target(request, req.model, req.options,
                                              len(req.prompt) + len(req.system or ""),
                                              req.keep_alive)

    def record(response: str, done: bool, **extra: Any) -> dict[str, Any]:
        return {"model": req.model, "created_at": rfc3339(utc_now()), "response": response,
                "done": done, **extra}

    # The prompt as chat turns: what the chat format renders and the fallback chain is sent.
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": req.prompt})
    options = _options(req_options, req.format)
    reply = await _elsewhere_or_unload(request, target, bool(req.prompt),
                                       req.keep_alive is not None and keep_alive == 0, messages,
                                       options, req.stream is not False, record, t0)
    if reply is not None:
        return reply
    if req.images:
        raise bad_request(NO_IMAGES)
    if req.suffix:
        raise bad_request(f'"{req.model}" does not support insert')
    _unsupported(req.model, think=req.think, logprobs=req.logprobs)
    if req.raw and (req.template or req.system or req.context):
        raise bad_request("raw mode does not support template, system, or context")
    if req.context and not all(0 <= t < 2**31 for t in req.context):
        raise bad_request("context must hold token ids (integers in [0, 2^31))")
    text = req.prompt
    if req.prompt and not req.raw:
        try:
            if req.template:
                text = render(req.template, {"System": req.system or "", "Prompt": req.prompt})
            else:
                text = format_gemma(messages)
        except (TemplateError, ValueError) as e:
            raise bad_request(str(e)) from None

    lease = await _lease_or_reply(request, target, keep_alive, bool(req.prompt), messages,
                                  options, req.stream is not False, record, t0)
    if isinstance(lease, Response):
        return lease
    engine = lease.engine
    if req.prompt and not req.raw and not req.template:
        # Checked above in Gemma's format; rendered now in the leased model's own.
        text = _rendered(lease, lambda: format_chat(messages, engine.arch))
    # req.context: the deprecated conversation memory of an earlier reply.
    ids = list(req.context or []) + lease.tokenize(text, not req.context, bad_request)

    def final(response: str, c: Completion, total: int) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if not req.raw:  # as Ollama: raw replies carry no context
            extra["context"] = ids + engine.tokenize(c.text, add_bos=False, special=False)
        return record(response, True, done_reason=c.done_reason, **extra,
                      **_stats(c, total, lease.load_duration))

    return await run_generation(request, lease, ids, options, req.stream is not False,
                                lambda piece: record(piece, False), final, t0)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Replies to ``messages`` in the Gemma chat format."""
    t0 = time.perf_counter_ns()
    req = await parse_body(request, ChatRequest)
    target, req_options, keep_alive = _target(request, req.model, req.options,
                                              sum(len(m.content or "") for m in req.messages),
                                              req.keep_alive)

    def record(content: str, done: bool, calls: Sequence[ToolCall] = (),
               **extra: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:  # Ollama's shape: arguments as an object
            message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                     for c in calls]
        return {"model": req.model, "created_at": rfc3339(utc_now()), "message": message,
                "done": done, **extra}

    messages = [{"role": m.role, "content": m.content or ""} | _tool_fields(m)
                for m in req.messages]
    if any(m.images for m in req.messages):
        raise bad_request(NO_IMAGES)
    # Elsewhere (the fallback chain) gets the messages, format and tools as they came; here
    # the tools become turns and a grammar.
    elsewhere = _options(req_options, req.format) | ({"tools": req.tools} if req.tools else {})
    try:  # the tools and tool messages are checked whoever answers
        turns, fmt = plan_chat(messages, req.tools, None, True, elsewhere.get("format"))
    except ToolError as e:
        raise bad_request(str(e)) from None
    options = {k: v for k, v in elsewhere.items() if k not in ("format", "tools")}
    if fmt is not None:
        options["format"] = fmt
    reply = await _elsewhere_or_unload(request, target, bool(req.messages),
                                       req.keep_alive is not None and keep_alive == 0, messages,
                                       elsewhere, req.stream is not False, record, t0)
    if reply is not None:
        return reply
    _unsupported(req.model, think=req.think, logprobs=req.logprobs)
    try:
        format_gemma(turns)  # a bad message is a 400 before the model is loaded
    except ValueError as e:
        raise bad_request(str(e)) from None

    lease = await _lease_or_reply(request, target, keep_alive, bool(req.messages), messages,
                                  elsewhere, req.stream is not False, record, t0)
    if isinstance(lease, Response):
        return lease
    # The prompt and the tool grammar in the leased model's chat format (Gemma 4 has its own).
    arch = lease.engine.arch
    text, fmt = _rendered(lease, lambda: plan_prompt(messages, req.tools, None, True,
                                                      elsewhere.get("format"), arch=arch))
    options.pop("format", None)
    if fmt is not None:
        options["format"] = fmt
    ids = lease.tokenize(text, True, bad_request)
    calling = CallFilter(bool(req.tools), arch)

    def final(content: str, c: Completion, total: int) -> dict[str, Any]:
        calls = calling.calls(c.text)
        return record("" if calls else content, True, calls, done_reason=c.done_reason,
                      **_stats(c, total, lease.load_duration))

    return await run_generation(request, lease, ids, options, req.stream is not False,
                                lambda piece: calling.piece(piece, lambda t: record(t, False)),
                                final, t0)
