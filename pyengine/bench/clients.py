"""Streaming clients for the A/B harness, over ``http.client`` with one connection per
request: chat requests (Ollama's ``/api/chat``, OpenAI's ``/v1/chat/completions``) and raw
completions (Ollama's ``/api/generate`` with ``raw: true``, OpenAI's ``/v1/completions``).

A raw completion prompt reaches the model as it is on Ollama's API and on llama-server's
``/v1/completions``. Ollama's own ``/v1/completions`` (and pyengine's, which follows it) wraps
the prompt in the model's chat format instead: address those servers with ``api=ollama`` for
raw prompts.

Every streamed line is timestamped (``time.perf_counter``) as soon as it is read, so time to
first token and decode speed are measured on the client, as a user would see them. Failures
never raise out of ``stream_chat``: they come back as a ``Reply`` with ``error`` set, so one bad
request is counted instead of aborting a benchmark. ``probe`` is the exception: it raises
``EndpointError`` with a message fit for the user when an endpoint is down or the wrong API.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

APIS = ("ollama", "openai")
Messages = Sequence[Mapping[str, Any]]


class EndpointError(Exception):
    """An endpoint cannot be used: unreachable, not the API it was said to be, no such model."""


@dataclass(frozen=True)
class Endpoint:
    """One side of a comparison: where it is, which API it speaks, which model it runs."""

    label: str  # "A" or "B", or the spec's name=
    url: str  # scheme://host:port[/prefix], without a trailing "/" or "/v1"
    api: str  # "ollama" or "openai"
    model: str | None = None  # None: the server's only (or first) model, found by probe
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer"

    def headers(self, **extra: str) -> dict[str, str]:
        """Request headers, with the API key when there is one."""
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {**extra, **auth}

    @property
    def chat_path(self) -> str:
        """Path of the streaming chat route, with the URL's prefix."""
        prefix = urlsplit(self.url).path.rstrip("/")
        return prefix + ("/api/chat" if self.api == "ollama" else "/v1/chat/completions")

    @property
    def completion_path(self) -> str:
        """Path of the streaming raw completion route, with the URL's prefix."""
        prefix = urlsplit(self.url).path.rstrip("/")
        return prefix + ("/api/generate" if self.api == "ollama" else "/v1/completions")

    def describe(self) -> str:
        """``A: http://host:port (ollama, model gemma3:1b)``."""
        return f"{self.label}: {self.url} ({self.api}, model {self.model or '?'})"


def parse_endpoint(spec: str, label: str) -> Endpoint:
    """Parses ``URL[,api=ollama|openai][,model=NAME][,name=LABEL][,key_env=VAR]`` into an
    ``Endpoint``.

    A URL without a scheme gets ``http://``. Without ``api=``, a URL ending in ``/v1`` is an
    OpenAI API and any other an Ollama API. ``key_env`` names an environment variable holding
    an API key (a key on the command line would show in the process list). Raises
    ``ValueError`` for a malformed spec or an unset variable.
    """
    parts = [p.strip() for p in spec.split(",")]
    url, options = parts[0], parts[1:]
    if not url:
        raise ValueError(f"--{label.lower()}: no URL in {spec!r}")
    if "://" not in url:
        url = "http://" + url
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"--{label.lower()}: not an http(s) URL: {parts[0]!r}")
    url = url.rstrip("/")
    api: str | None = None
    model: str | None = None
    name = label
    api_key: str | None = None
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise ValueError(f"--{label.lower()}: expected key=value, got {option!r}")
        if key == "api":
            if value.lower() not in APIS:
                raise ValueError(f"--{label.lower()}: api must be one of {', '.join(APIS)}")
            api = value.lower()
        elif key == "model":
            model = value
        elif key == "name":
            name = value
        elif key == "key_env":
            api_key = os.environ.get(value)
            if not api_key:
                raise ValueError(f"--{label.lower()}: environment variable {value} is not set")
        else:
            raise ValueError(f"--{label.lower()}: unknown key {key!r} "
                             "(api, model, name, key_env)")
    if url.endswith("/v1"):
        url = url[:-3]  # the route adds it back; the user may write the OpenAI base URL
        api = api or "openai"
    return Endpoint(label=name, url=url, api=api or "ollama", model=model, api_key=api_key)


@dataclass
class GenerationSettings:
    """What every request asks for: greedy decoding, a seed and a token budget."""

    max_tokens: int = 64
    seed: int = 42
    ignore_eos: bool = False  # keep generating past end-of-turn (servers that support it)
    raw: bool = False  # raw completions instead of chat requests


@dataclass
class Reply:
    """One streamed reply as the client saw it; times are seconds from sending the request."""

    ok: bool = False
    error: str | None = None
    status: int | None = None
    text: str = ""
    chunk_times: list[float] = field(default_factory=list)  # arrivals of text-bearing chunks
    ttft: float | None = None
    latency: float | None = None
    completion_tokens: int | None = None  # server-reported when given, else the chunk count
    tokens_source: str = "chunks"  # "server" or "chunks"
    prompt_tokens: int | None = None
    server_eval_tps: float | None = None
    server_prompt_tps: float | None = None
    finish_reason: str | None = None
    pieces: list[str] = field(default_factory=list)  # the text of each text-bearing chunk

    @property
    def decode_tps(self) -> float | None:
        """Decode tokens per second: tokens after the first over the time from first to last."""
        if not self.ok or not self.completion_tokens or self.completion_tokens < 2:
            return None
        span = self.chunk_times[-1] - self.chunk_times[0] if len(self.chunk_times) > 1 else 0.0
        return (self.completion_tokens - 1) / span if span > 0 else None


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    split = urlsplit(url)
    cls = http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
    return cls(split.hostname or "127.0.0.1", split.port, timeout=timeout)


def _error_text(status: int, body: bytes) -> str:
    """The server's own error message (Ollama: ``{"error": "..."}``, OpenAI: ``{"error":
    {"message": "..."}}``), else the start of the body."""
    try:
        data = json.loads(body)
        err = data.get("error", data.get("detail")) if isinstance(data, dict) else None
        if isinstance(err, dict):
            err = err.get("message", err)
        if err:
            return f"HTTP {status}: {err}"
    except ValueError:
        pass
    text = body.decode("utf-8", errors="replace").strip()
    return f"HTTP {status}: {text[:300] or http.client.responses.get(status, '')}"


def _connect_error(endpoint: Endpoint, e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return f"cannot connect to {endpoint.url}: connection refused (is the server running?)"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"{endpoint.url} did not answer in time"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host of {endpoint.url}: {e}"
    return f"{endpoint.url}: {type(e).__name__}: {e}"


def get_json(endpoint: Endpoint, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``path`` (under the URL's prefix); (status, decoded JSON or None). Raises OSError
    and ``http.client.HTTPException`` for transport failures."""
    conn = _connection(endpoint.url, timeout)
    try:
        conn.request("GET", urlsplit(endpoint.url).path.rstrip("/") + path,
                     headers=endpoint.headers(Accept="application/json"))
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body) if body else None
    except ValueError:
        return resp.status, None


def probe(endpoint: Endpoint, timeout: float = 10.0) -> tuple[Endpoint, dict[str, Any]]:
    """Checks that ``endpoint`` answers its API and lists its models.

    Returns the endpoint (with ``model`` filled in when it was not given and the server has
    models) and facts for the report (``models``, ``version`` for Ollama). Raises
    ``EndpointError`` when it is down, speaks another API, or names a model Ollama lacks.
    """
    path = "/api/tags" if endpoint.api == "ollama" else "/v1/models"
    try:
        status, data = get_json(endpoint, path, timeout)
        version = None
        if endpoint.api == "ollama" and status == 200:
            v_status, v_data = get_json(endpoint, "/api/version", timeout)
            version = v_data.get("version") if v_status == 200 and isinstance(v_data, dict) \
                else None
    except (OSError, http.client.HTTPException) as e:
        raise EndpointError(f"{endpoint.label}: {_connect_error(endpoint, e)}") from None
    other = "openai" if endpoint.api == "ollama" else "ollama"
    if status in (401, 403):
        hint = "refused the API key" if endpoint.api_key else \
            "needs an API key (add key_env=VAR, VAR holding the key)"
        raise EndpointError(f"{endpoint.label}: {endpoint.url} {hint} (HTTP {status})")
    if status != 200 or not isinstance(data, dict):
        raise EndpointError(f"{endpoint.label}: {endpoint.url} does not answer GET {path} "
                            f"(HTTP {status}); is it an {other} API? (add api={other})")
    if endpoint.api == "ollama":
        models = [m.get("name") or m.get("model") for m in data.get("models") or []
                  if isinstance(m, dict)]
    else:
        models = [m.get("id") for m in data.get("data") or [] if isinstance(m, dict)]
    models = [m for m in models if isinstance(m, str)]
    facts: dict[str, Any] = {"models": models, "version": version}
    if endpoint.model is None:
        if not models:
            raise EndpointError(f"{endpoint.label}: {endpoint.url} lists no models; "
                                f"name one with model=NAME")
        if endpoint.api == "ollama" and len(models) > 1:
            raise EndpointError(f"{endpoint.label}: {endpoint.url} serves several models; "
                                f"pick one with model=NAME: {', '.join(models)}")
        endpoint = replace(endpoint, model=models[0])
    elif endpoint.api == "ollama" and not _ollama_has(models, endpoint.model):
        raise EndpointError(f"{endpoint.label}: model {endpoint.model!r} not found at "
                            f"{endpoint.url}; it has: {', '.join(models) or 'no models'}"
                            + (f" (ollama pull {endpoint.model})" if version else ""))
    return endpoint, facts


def _ollama_has(models: Sequence[str], name: str) -> bool:
    # Ollama's names: a missing tag means ":latest".
    def full(n: str) -> str:
        return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"

    return full(name) in {full(m) for m in models}


def _ollama_options(settings: GenerationSettings) -> dict[str, Any]:
    # Ollama's own default repeat_penalty is 1.1; llama-server's and pyengine's is 1.0. Greedy
    # texts compare only without a penalty on both sides, so it is sent explicitly.
    options: dict[str, Any] = {"temperature": 0, "seed": settings.seed,
                               "num_predict": settings.max_tokens, "repeat_penalty": 1.0}
    if settings.ignore_eos:
        options["ignore_eos"] = True  # honoured by pyengine; stock Ollama ignores it
    return options


def _openai_body(endpoint: Endpoint, settings: GenerationSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"model": endpoint.model, "stream": True,
                            "stream_options": {"include_usage": True},
                            "max_tokens": settings.max_tokens, "temperature": 0,
                            "seed": settings.seed}
    if settings.ignore_eos:
        body["ignore_eos"] = True  # a llama.cpp server extension
    return body


def request_body(endpoint: Endpoint, messages: Messages,
                 settings: GenerationSettings) -> dict[str, Any]:
    """The JSON body of one greedy, seeded, streaming chat request in the endpoint's API."""
    if endpoint.api == "ollama":
        return {"model": endpoint.model, "messages": list(messages), "stream": True,
                "options": _ollama_options(settings)}
    return {**_openai_body(endpoint, settings), "messages": list(messages)}


def completion_body(endpoint: Endpoint, prompt: str,
                    settings: GenerationSettings) -> dict[str, Any]:
    """The JSON body of one greedy, seeded, streaming raw completion of ``prompt``: Ollama's
    ``/api/generate`` with ``raw: true`` (no template), or OpenAI's ``/v1/completions``."""
    if endpoint.api == "ollama":
        return {"model": endpoint.model, "prompt": prompt, "raw": True, "stream": True,
                "options": _ollama_options(settings)}
    return {**_openai_body(endpoint, settings), "prompt": prompt}


def _lines(resp: http.client.HTTPResponse) -> Iterator[tuple[float, str]]:
    """(arrival time, line) for each non-empty line of a streamed body, as it arrives."""
    while True:
        raw = resp.readline()
        if not raw:
            return
        now = time.perf_counter()
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            yield now, line


def stream_chat(endpoint: Endpoint, messages: Messages, settings: GenerationSettings,
                timeout: float = 600.0) -> Reply:
    """Sends one streaming chat request and reads the reply to its end; never raises for
    transport or server errors (they are in ``Reply.error``)."""
    return _stream(endpoint, endpoint.chat_path, request_body(endpoint, messages, settings),
                   timeout)


def stream_completion(endpoint: Endpoint, prompt: str, settings: GenerationSettings,
                      timeout: float = 600.0) -> Reply:
    """Sends one streaming raw completion request (see ``completion_body``) and reads the reply
    to its end; never raises for transport or server errors (they are in ``Reply.error``)."""
    return _stream(endpoint, endpoint.completion_path,
                   completion_body(endpoint, prompt, settings), timeout)


def _stream(endpoint: Endpoint, path: str, payload: dict[str, Any], timeout: float) -> Reply:
    reply = Reply()
    body = json.dumps(payload).encode()
    conn = _connection(endpoint.url, timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=body,
                     headers=endpoint.headers(**{
                         "Content-Type": "application/json",
                         "Accept": "application/x-ndjson, text/event-stream"}))
        resp = conn.getresponse()
        reply.status = resp.status
        if resp.status != 200:
            reply.error = _error_text(resp.status, resp.read())
            return reply
        reader = _read_ollama if endpoint.api == "ollama" else _read_openai
        reader(_lines(resp), reply, t0)
    except (OSError, http.client.HTTPException) as e:
        reply.error = _connect_error(endpoint, e)
    except ValueError as e:  # a line that is not JSON
        reply.error = f"malformed stream: {e}"
    finally:
        conn.close()
    reply.latency = time.perf_counter() - t0
    if reply.error is None:
        if reply.completion_tokens is None:
            reply.completion_tokens = len(reply.chunk_times)
        reply.ok = True
    return reply


def _arrived(reply: Reply, now: float, t0: float, text: str) -> None:
    reply.text += text
    reply.pieces.append(text)
    reply.chunk_times.append(now - t0)
    if reply.ttft is None:
        reply.ttft = now - t0


def _read_ollama(lines: Iterator[tuple[float, str]], reply: Reply, t0: float) -> None:
    """NDJSON records: ``message.content`` (chat) or ``response`` (generate) pieces, then
    ``done: true`` with counts in ns."""
    for now, line in lines:
        record = json.loads(line)
        if "error" in record:
            reply.error = f"stream error: {record['error']}"
            return
        content = (record.get("message") or {}).get("content") or record.get("response") or ""
        if content:
            _arrived(reply, now, t0, content)
        if record.get("done"):
            reply.finish_reason = record.get("done_reason")
            if "eval_count" in record:
                reply.completion_tokens = int(record["eval_count"])
                reply.tokens_source = "server"
                duration = record.get("eval_duration") or 0
                if duration > 0:
                    reply.server_eval_tps = record["eval_count"] / duration * 1e9
            if "prompt_eval_count" in record:
                reply.prompt_tokens = int(record["prompt_eval_count"])
                duration = record.get("prompt_eval_duration") or 0
                if duration > 0:
                    reply.server_prompt_tps = record["prompt_eval_count"] / duration * 1e9
            return
    reply.error = "the stream ended before its done record"


def _read_openai(lines: Iterator[tuple[float, str]], reply: Reply, t0: float) -> None:
    """SSE events ``data: {chunk}``: ``choices[0].delta.content`` (chat) or ``choices[0].text``
    (completions) pieces, ``usage`` (asked for with ``stream_options.include_usage``) and
    llama.cpp's ``timings``; ``data: [DONE]`` ends."""
    finished = False
    for now, line in lines:
        if line.startswith(("event:", "id:", "retry:", ":")):
            continue
        if line.startswith("error:"):
            reply.error = f"stream error: {line[6:].strip()}"
            return
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            finished = True
            break
        event = json.loads(data)
        if "error" in event:
            err = event["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            reply.error = f"stream error: {message}"
            return
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if content:
                _arrived(reply, now, t0, content)
            if choice.get("finish_reason"):
                reply.finish_reason = choice["finish_reason"]
                finished = True
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            reply.completion_tokens = int(usage["completion_tokens"])
            reply.tokens_source = "server"
            if usage.get("prompt_tokens") is not None:
                reply.prompt_tokens = int(usage["prompt_tokens"])
        timings = event.get("timings")
        if isinstance(timings, dict):
            reply.server_eval_tps = timings.get("predicted_per_second") or reply.server_eval_tps
            reply.server_prompt_tps = timings.get("prompt_per_second") or reply.server_prompt_tps
    if not finished:  # neither [DONE] nor a finish_reason: the reply was cut off
        reply.error = "the stream ended before the reply finished"
