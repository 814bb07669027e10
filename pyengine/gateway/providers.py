"""The backends the fallback chain can send a chat request to: this engine (native), a real
Ollama server through the official ``ollama`` client, and the paid APIs of the strategy document
through their official SDKs (OpenAI, Anthropic; installed with ``pip install pyengine[paid]``).

Each backend answers ``chat_stream(model, messages, options, timeout_s)``, an iterator of the
reply's text pieces ending with the ``Reply`` (``chat`` collects it), or raises ``CannotServe``
(this backend cannot serve that model at all: not a failure of the backend) or
``BackendFailure`` (it tried and failed, or timed out: counts against its circuit breaker),
before its first piece or mid-stream.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

from pyengine.gateway.config import Config

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


# A backend's stream: text pieces, then the Reply.
ReplyStream = Iterator[Union[str, Reply]]


def collect(stream: ReplyStream) -> Reply:
    """The Reply at the end of a stream (its text is the whole reply)."""
    for item in stream:
        if isinstance(item, Reply):
            return item
    raise BackendFailure("the reply stream ended without its final record")


# --------------------------------------------------------------------------------- native

def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class NativeBackend:
    """This engine: models resolved by the store, loaded on first use, at most ``max_loaded``
    kept (least recently used unloaded first)."""

    name, paid = "native", False

    def __init__(self, config: Config, store: Any = None, max_loaded: int = 2,
                 engine_options: Mapping[str, Any] | None = None) -> None:
        from pyengine.gateway.store import ModelStore

        self.config = config
        self.store = store if store is not None else ModelStore()
        self.max_loaded = max_loaded
        self.engine_options = dict(engine_options or {})
        self._engines: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _engine(self, model: str) -> Any:
        from pyengine.engine import Engine
        from pyengine.errors import PyEngineError

        with self._lock:
            if model in self._engines:
                self._engines.move_to_end(model)
                return self._engines[model]
            try:
                ref = self.store.resolve(model)
            except (LookupError, FileNotFoundError) as e:
                raise CannotServe(f"model {model!r} is not available here: {e}") from None
            except ValueError as e:  # a name the store refuses
                raise CannotServe(f"model name {model!r} refused: {e}") from None
            path = Path(ref.path)
            need = path.stat().st_size
            free = available_memory()
            if free is not None and need > free:
                raise CannotServe(f"not enough memory for {model!r}: its weights take "
                                  f"{need >> 20} MiB, {free >> 20} MiB available")
            try:
                eng = Engine(path, config=self.config, **self.engine_options)
            except PyEngineError as e:  # unsupported architecture or tensor type, bad file
                raise CannotServe(f"the native engine cannot run {model!r}: {e}") from None
            self._engines[model] = eng
            while len(self._engines) > self.max_loaded:
                _, old = self._engines.popitem(last=False)
                old.close()
            return eng

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        from pyengine.errors import PyEngineError

        eng = self._engine(model)
        chunks: Iterator[Any] = iter(())
        try:
            chunks = eng.chat_stream(messages, timeout=timeout_s, **options)
            for chunk in chunks:
                if chunk.text:
                    yield chunk.text
                if chunk.done and chunk.completion is not None:
                    c = chunk.completion
                    yield Reply(c.text, model, c.done_reason,
                                c.prompt_eval_count + c.cached_tokens, c.eval_count)
        except TimeoutError as e:
            raise BackendFailure(str(e), timeout=True) from None
        except PyEngineError as e:
            raise BackendFailure(f"native engine error: {e}") from None
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a stream left early cancels its request

    def chat(self, model: str, messages: Messages, options: Mapping[str, Any],
             timeout_s: float) -> Reply:
        return collect(self.chat_stream(model, messages, options, timeout_s))

    def close(self) -> None:
        with self._lock:
            for eng in self._engines.values():
                eng.close()
            self._engines.clear()


# --------------------------------------------------------------------------------- Ollama

# Our option names -> Ollama's.
_OLLAMA_OPTIONS = {"max_tokens": "num_predict"}


class OllamaBackend:
    """A real Ollama server (or anything speaking its API) at ``config.ollama_host``."""

    name, paid = "ollama", False

    def __init__(self, config: Config, headers: Mapping[str, str] | None = None) -> None:
        self.host = config.ollama_host
        self.headers = dict(headers or {})

    def chat_stream(self, model: str, messages: Messages, options: Mapping[str, Any],
                    timeout_s: float) -> ReplyStream:
        import httpx
        import ollama

        opts = {_OLLAMA_OPTIONS.get(k, k): v for k, v in options.items() if v is not None}
        # timeout_s bounds each read: a stream that stalls that long fails.
        client = ollama.Client(host=self.host, timeout=timeout_s, headers=self.headers)
        parts: list[str] = []
        try:
            for r in client.chat(model=model, messages=list(messages), options=opts, stream=True):
                piece = r.message.content or ""
                if piece:
                    parts.append(piece)
                    yield piece
                if r.done:
                    yield Reply("".join(parts), model, r.done_reason or "stop",
                                r.prompt_eval_count or 0, r.eval_count or 0)
                    return
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
        raise BackendFailure(f"Ollama at {self.host} ended the stream before its last record")

    def chat(self, model: str, messages: Messages, options: Mapping[str, Any],
             timeout_s: float) -> Reply:
        return collect(self.chat_stream(model, messages, options, timeout_s))


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
        try:
            if self.name == "openai":
                import openai

                client = openai.OpenAI(timeout=timeout_s, max_retries=0)
                kw: dict[str, Any] = {"max_tokens": max_tokens}
                if temperature is not None:
                    kw["temperature"] = temperature
                r = client.chat.completions.create(model=model, messages=list(messages), **kw)
                text = r.choices[0].message.content or ""
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
                r = client.messages.create(model=model, messages=turns, **kw)
                text = "".join(getattr(b, "text", "") for b in r.content)
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
        return Reply(text, model, reason, usage[0], usage[1], cost)

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

