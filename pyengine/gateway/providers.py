"""The backends the fallback chain can send a request to: this engine (native, over the model
pool of ``pyengine.pool``), a real Ollama server through the official ``ollama`` client, and the
paid APIs of the strategy document through their official SDKs (OpenAI, Anthropic; installed
with ``pip install pyengine[paid]``).

Each backend answers ``chat_stream(model, messages, options, timeout_s)``, an iterator of the
reply's text pieces ending with the ``Reply`` (``chat`` collects it), or raises ``CannotServe``
(this backend cannot serve that model at all: not a failure of the backend) or
``BackendFailure`` (it tried and failed, or timed out: counts against its circuit breaker),
before its first piece or mid-stream. The native and Ollama backends also answer
``embed(model, inputs, truncate, timeout_s)`` with ``Embeddings`` (paid APIs embed with other
models, so they are never asked).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, Union

from pyengine.gateway.config import Config
from pyengine.structured.tools import ToolCall
from pyengine.pool import Lease, ModelNotFound, ModelPool, ModelUnavailable

Messages = Sequence[Mapping[str, Any]]


class CannotServe(Exception):
    """The backend cannot serve this model (missing, unsupported, too large for memory)."""


class BackendFailure(Exception):
    """The backend failed or timed out on this request."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass
class Reply:
    text: str
    model: str
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    tool_calls: list[ToolCall] = field(default_factory=list)  # calls of the request's tools


# A backend's stream: text pieces, then the Reply.
ReplyStream = Iterator[Union[str, Reply]]


def collect(stream: ReplyStream) -> Reply:
    """The Reply at the end of a stream (its text is the whole reply)."""
    for item in stream:
        if isinstance(item, Reply):
            return item
    raise BackendFailure("the reply stream ended without its final record")


class Streaming:
    """A backend whose answer is its stream: ``chat`` collects ``chat_stream``."""

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        raise NotImplementedError

    def chat(self, model: str, messages: Messages, options: Mapping[str, Any],
             timeout_s: float) -> Reply:
        return collect(self.chat_stream(model, messages, options, timeout_s))


# --------------------------------------------------------------------------------- native

@dataclass
class Embeddings:
    """A backend's embeddings of some inputs: one unit-length vector each, in their order."""

    vectors: list[list[float]]
    model: str
    prompt_tokens: int


class NativeBackend(Streaming):
    """This engine over a ``ModelPool`` (``pyengine.pool``): the pool given (a server passes its
    own), or one that resolves names through the model store and keeps at most ``max_loaded``
    models (an idle one stays loaded until another needs its place). The pool's policy decides
    what loads; what it cannot hold (missing, not runnable here, not enough memory now) is
    ``CannotServe``."""

    name, paid = "native", False

    def __init__(self, config: Config, store: Any = None, max_loaded: int = 2,
                 engine_options: Mapping[str, Any] | None = None,
                 pool: ModelPool | None = None) -> None:
        self.config = config
        self._owns_pool = pool is None  # a server's pool is closed by its server
        if pool is None:
            from pyengine.gateway.store import ModelStore

            names = store if store is not None else ModelStore()
            pool = ModelPool(resolver=lambda model: names.resolve(model).path,
                             max_loaded=max_loaded,
                             engine_options={"config": config, **(engine_options or {})})
        self.pool = pool

    def lease(self, model: str, timeout_s: float | None = None) -> Lease:
        """The pool's lease on ``model`` (release it when done); waits at most ``timeout_s``
        for the pool to make room."""
        try:
            return self.pool.lease(model, wait_s=timeout_s)
        except ModelNotFound as e:
            raise CannotServe(f"model {model!r} is not available here"
                              + (f": {e.detail}" if e.detail else "")) from None
        except ModelUnavailable as e:  # its file, or the memory check this time
            raise CannotServe(f"the native engine cannot run {model!r}: {e.reason}") from None
        except TimeoutError as e:
            raise BackendFailure(str(e), timeout=True) from None
        except (OSError, ValueError) as e:  # the file went away; options the engine refuses
            raise CannotServe(f"the native engine cannot load {model!r}: {e}") from None

    @contextmanager
    def _running(self, model: str, timeout_s: float) -> Iterator[Lease]:
        """A lease on ``model`` for one request, released after it; the engine's errors as the
        chain's (a time-out, or a failure of the engine)."""
        from pyengine.errors import PyEngineError

        lease = self.lease(model, timeout_s)
        try:
            yield lease
        except TimeoutError as e:
            raise BackendFailure(str(e), timeout=True) from None
        except PyEngineError as e:
            raise BackendFailure(f"native engine error: {e}") from None
        finally:
            lease.release()

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        with self._running(model, timeout_s) as lease:
            chunks = lease.engine.chat_stream(messages, timeout=timeout_s, **options)
            try:
                for chunk in chunks:
                    if chunk.text:
                        yield chunk.text
                    if chunk.done and chunk.completion is not None:
                        c = chunk.completion
                        yield Reply(c.text, model, c.done_reason,
                                    c.prompt_eval_count + c.cached_tokens, c.eval_count,
                                    tool_calls=list(c.tool_calls))
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a stream left early cancels its request (before the release)

    def embed(self, model: str, inputs: Sequence[str | Sequence[int]], truncate: bool,
              timeout_s: float) -> Embeddings:
        """Each input's embedding (text, or token ids); an input longer than the context is
        cut to it when ``truncate``, refused (``ValueError``) otherwise."""
        with self._running(model, timeout_s) as lease:
            ids = [context_ids(lease.engine, item, truncate) for item in inputs]
            vectors = [[float(x) for x in lease.engine.embed(one)] for one in ids]
        return Embeddings(vectors, model, sum(len(one) for one in ids))

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()


def context_ids(eng: Any, item: str | Sequence[int], truncate: bool) -> list[int]:
    """An embedding input as token ids that fit ``eng``'s context: cut to it with
    ``truncate``; ``ValueError`` for an empty input, or a long one without ``truncate``."""
    ids = eng.tokenize(item) if isinstance(item, str) else list(item)
    if not ids:
        raise ValueError("input is empty")
    if len(ids) > eng.n_ctx:
        if not truncate:
            raise ValueError(f"input length ({len(ids)} tokens) exceeds the context length "
                             f"({eng.n_ctx})")
        ids = ids[: eng.n_ctx]
    return ids


# --------------------------------------------------------------------------------- Ollama

# Our option names -> Ollama's.
_OLLAMA_OPTIONS = {"max_tokens": "num_predict"}


def _ollama_messages(messages: Messages) -> list[dict[str, Any]]:
    """Chat messages in Ollama's shape: an assistant's tool calls with arguments as objects
    (OpenAI's clients send JSON strings), a tool result with the tool's name."""
    names: dict[str, str] = {}
    out = []
    for m in messages:
        msg = {k: m[k] for k in ("role", "content", "images", "tool_name") if m.get(k) is not None}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = dict(c.get("function") or {})
                if isinstance(f.get("arguments"), str):
                    f["arguments"] = json.loads(f["arguments"] or "{}")
                names[c.get("id", "")] = f.get("name", "")
                calls.append({"function": f})
            msg["tool_calls"] = calls
        if m.get("role") == "tool" and "tool_name" not in msg and m.get("tool_call_id") in names:
            msg["tool_name"] = names[m["tool_call_id"]]
        out.append(msg)
    return out


class OllamaBackend(Streaming):
    """A real Ollama server (or anything speaking its API) at ``config.ollama_host``."""

    name, paid = "ollama", False

    def __init__(self, config: Config, headers: Mapping[str, str] | None = None) -> None:
        self.host = config.ollama_host
        self.headers = dict(headers or {})

    def _client(self, timeout_s: float) -> Any:
        import ollama

        # timeout_s bounds each read: a stream that stalls that long fails.
        return ollama.Client(host=self.host, timeout=timeout_s, headers=self.headers)

    @contextmanager
    def _answering(self, model: str, timeout_s: float) -> Iterator[None]:
        """The client's errors as the chain's: a 404 is ``CannotServe``, the rest failures."""
        import httpx
        import ollama

        try:
            yield
        except ollama.ResponseError as e:
            if e.status_code == 404:
                raise CannotServe(f"the Ollama server at {self.host} has no model {model!r}") \
                    from None
            raise BackendFailure(f"Ollama at {self.host} answered {e.status_code}: {e.error}") \
                from None
        except httpx.TimeoutException:
            raise BackendFailure(f"Ollama at {self.host} timed out after {timeout_s:g} s",
                                 timeout=True) from None
        except (httpx.HTTPError, ConnectionError, OSError) as e:
            raise BackendFailure(f"Ollama at {self.host} is unreachable: {e}") from None

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        fmt = options.get("format")
        if fmt is not None and not isinstance(fmt, (str, dict)):
            raise CannotServe(f"Ollama at {self.host} takes JSON formats, not grammars")
        opts = {_OLLAMA_OPTIONS.get(k, k): v for k, v in options.items()
                if v is not None and k != "format"}
        extra = {} if fmt is None else {"format": fmt}
        if options.get("tools"):
            extra["tools"] = list(options["tools"])
        opts.pop("tools", None)
        client = self._client(timeout_s)
        parts: list[str] = []
        calls: list[ToolCall] = []
        with self._answering(model, timeout_s):
            for r in client.chat(model=model, messages=_ollama_messages(messages), options=opts,
                                 stream=True, **extra):
                piece = r.message.content or ""
                if piece:
                    parts.append(piece)
                    yield piece
                calls += [ToolCall(c.function.name, dict(c.function.arguments or {}))
                          for c in r.message.tool_calls or []]
                if r.done:
                    yield Reply("".join(parts), model, r.done_reason or "stop",
                                r.prompt_eval_count or 0, r.eval_count or 0, tool_calls=calls)
                    return
        raise BackendFailure(f"Ollama at {self.host} ended the stream before its last record")

    def embed(self, model: str, inputs: Sequence[str | Sequence[int]], truncate: bool,
              timeout_s: float) -> Embeddings:
        """Each text input's embedding, from Ollama's ``/api/embed`` (token ids are not part of
        its API: ``CannotServe``)."""
        if not all(isinstance(item, str) for item in inputs):
            raise CannotServe(f"Ollama at {self.host} embeds text, not token ids")
        with self._answering(model, timeout_s):
            r = self._client(timeout_s).embed(model=model, input=list(inputs), truncate=truncate)
        vectors = [[float(x) for x in v] for v in r.embeddings]
        if len(vectors) != len(inputs):
            raise BackendFailure(f"Ollama at {self.host} returned {len(vectors)} embeddings "
                                 f"for {len(inputs)} inputs")
        return Embeddings(vectors, model, r.prompt_eval_count or 0)


# ---------------------------------------------------------------------------------- paid

@dataclass(frozen=True)
class PaidModel:
    provider: str  # "openai" | "anthropic"
    model: str     # the provider's model id
    usd_per_million: float  # the document's price per million tokens
    heavy: bool    # for the complex / quality path


# The strategy document's table, in its priority order.
PAID_MODELS = (
    PaidModel("openai", "gpt-4o-mini", 0.15, heavy=False),
    PaidModel("openai", "gpt-4-turbo", 10.0, heavy=True),
    PaidModel("anthropic", "claude-3-haiku-20240307", 0.25, heavy=False),
    PaidModel("anthropic", "claude-3-sonnet-20240229", 3.0, heavy=True),
)


def paid_models_for(tier: str) -> list[PaidModel]:
    """Paid models for a tier, best first: the quality and alternative tiers want the complex
    reasoning models, the fast and primary tiers the fast ones (the others follow)."""
    heavy = tier in ("quality", "alternative")
    return sorted(PAID_MODELS, key=lambda m: (m.heavy != heavy, PAID_MODELS.index(m)))


def estimate_tokens(messages: Messages) -> int:
    """A conservative token count of messages before a paid call (about 3 characters a token)."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 3 + 8 * len(messages) + 1


class PaidBackend:
    """One provider through its official SDK; API keys come from the SDKs' usual variables
    (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``), endpoints may be moved with
    ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``."""

    paid = True

    def __init__(self, provider: str) -> None:
        if provider not in ("openai", "anthropic"):
            raise ValueError(f"unknown paid provider {provider!r}")
        self.name = provider

    def chat(self, model: str, messages: Messages, options: Mapping[str, Any],
             timeout_s: float) -> Reply:
        max_tokens = int(options.get("max_tokens") or options.get("num_predict") or 512)
        temperature = options.get("temperature")
        fmt = options.get("format")
        if fmt is not None and not isinstance(fmt, (str, dict)):
            raise CannotServe(f"the {self.name} API takes JSON formats, not grammars")
        schema = {"type": "object"} if fmt == "json" else fmt
        tools = list(options.get("tools") or [])
        try:
            if self.name == "openai":
                import openai

                client = openai.OpenAI(timeout=timeout_s, max_retries=0)
                kw: dict[str, Any] = {"max_tokens": max_tokens}
                if temperature is not None:
                    kw["temperature"] = temperature
                if schema is not None:  # the format in OpenAI's words: a JSON Schema answer
                    kw["response_format"] = {"type": "json_schema", "json_schema": {
                        "name": "answer", "schema": schema}}
                if tools:
                    kw["tools"] = tools
                r = client.chat.completions.create(model=model, messages=list(messages), **kw)
                text = r.choices[0].message.content or ""
                calls = [ToolCall(c.function.name, json.loads(c.function.arguments or "{}"))
                         for c in r.choices[0].message.tool_calls or []]
                usage = (r.usage.prompt_tokens, r.usage.completion_tokens) if r.usage else (0, 0)
                reason = r.choices[0].finish_reason or "stop"
            else:
                import anthropic

                client = anthropic.Anthropic(timeout=timeout_s, max_retries=0)
                system = "\n\n".join(str(m["content"]) for m in messages
                                       if m.get("role") == "system")
                turns = [{"role": "assistant" if m.get("role") in ("assistant", "model")
                          else "user", "content": str(m.get("content", ""))}
                         for m in messages if m.get("role") != "system"]
                kw = {"max_tokens": max_tokens}
                if system:
                    kw["system"] = system
                if temperature is not None:
                    kw["temperature"] = temperature
                if schema is not None:
                    # Anthropic's way to a JSON answer of a schema: one tool it must call.
                    kw["tools"] = [{"name": "answer", "input_schema": schema,
                                    "description": "Give the answer as this tool's input."}]
                    kw["tool_choice"] = {"type": "tool", "name": "answer"}
                elif tools:
                    kw["tools"] = [{"name": t["function"]["name"],
                                    "description": t["function"].get("description", ""),
                                    "input_schema": t["function"].get("parameters") or
                                    {"type": "object", "properties": {}}} for t in tools]
                r = client.messages.create(model=model, messages=turns, **kw)
                uses = [b for b in r.content if getattr(b, "type", "") == "tool_use"]
                calls = []
                if schema is not None:
                    text = "".join(json.dumps(b.input) for b in uses)
                else:
                    text = "".join(getattr(b, "text", "") for b in r.content)
                    calls = [ToolCall(b.name, dict(b.input)) for b in uses]
                usage = (r.usage.input_tokens, r.usage.output_tokens)
                reason = "length" if r.stop_reason == "max_tokens" else "stop"
        except ImportError:
            raise CannotServe(f"the {self.name} SDK is not installed "
                              "(pip install pyengine[paid])") from None
        except Exception as e:  # the SDKs' own error types: connection, status, timeout
            timeout = "timeout" in type(e).__name__.lower()
            raise BackendFailure(f"{self.name} failed: {type(e).__name__}: {e}", timeout) from None
        price = next(m.usd_per_million for m in PAID_MODELS if m.model == model)
        cost = (usage[0] + usage[1]) * price / 1e6
        return Reply(text, model, "stop" if calls else reason, usage[0], usage[1], cost,
                     tool_calls=calls)

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        # Asked whole: a paid call is billed and capped as one, and the cap is checked first.
        reply = self.chat(model, messages, options, timeout_s)
        if reply.text:
            yield reply.text
        yield reply


def has_key(provider: str) -> bool:
    """Whether the provider's API key is set (a paid call without one is not attempted)."""
    return bool(os.environ.get("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"))

