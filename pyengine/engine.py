"""The public ``Engine``: load a Gemma GGUF model, tokenize, score and generate."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence, Union

import numpy as np

from pyengine import _core, mlx_backend
from pyengine.core_protocol import BackendCore
from pyengine.aio import ReadyPump
from pyengine.chat import format_chat
from pyengine.gateway.config import BACKENDS, KV_CACHE_TYPES, SPECULATIVE, Config
from pyengine.errors import PyEngineError
from pyengine.structured import Grammars
from pyengine.structured.tools import CallFilter, ToolCall, parse_reply, plan_prompt
from pyengine.options import GenerateOptions
from pyengine.prompt_cache import cache_folder, model_digest

log = logging.getLogger(__name__)

Prompt = Union[str, Sequence[int]]


@dataclass
class Chunk:
    """One streamed piece of output: complete UTF-8 ``text`` and the ``token`` that produced it.

    The last chunk of a stream has ``done=True``, its ``done_reason`` and the ``completion``.
    """

    text: str
    token: int
    done: bool = False
    done_reason: str | None = None
    completion: "Completion | None" = None


@dataclass
class Completion:
    """The result of a generation; durations are nanoseconds, as Ollama reports them."""

    text: str
    tokens: list[int] = field(default_factory=list)
    done_reason: str = "stop"
    prompt_eval_count: int = 0
    eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    total_duration: int = 0
    load_duration: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    # Calls of the request's tools the reply made (then ``text`` is ""); see structured.tools.
    tool_calls: list[ToolCall] = field(default_factory=list)


def pick_backend(name: str) -> str:
    """``native`` or ``mlx`` for a backend name (``auto`` resolved for this machine)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        if mlx_backend.preferred():
            return "mlx"
        return "cuda" if _core.cuda_available() else "native"
    if name == "mlx" and not mlx_backend.available():
        raise ImportError(mlx_backend.EXTRA_HINT)
    if name == "cuda" and not _core.cuda_available():
        raise PyEngineError(f"backend 'cuda' is unavailable: {_core.cuda_device_info()}")
    return name


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """Maps a model argument to a GGUF file: a path, or a name the store resolves (the
    project's registry, then Ollama's on-disk store). Raises ``FileNotFoundError``."""
    from pyengine.gateway.store import resolve_model

    return Path(resolve_model(model).path)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _Stream:
    """The iterator ``Engine.stream`` returns: closing it (or dropping it, even before the first
    chunk) cancels the request, which a bare generator could not do before it had started."""

    def __init__(self, chunks: Iterator[Chunk], req: Any) -> None:
        self._chunks, self._req = chunks, req

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stops the stream; a request still running is cancelled and its KV blocks freed."""
        self._chunks.close()  # type: ignore[attr-defined]
        if not self._req.finished:
            self._req.cancel()

    def __del__(self) -> None:
        self.close()


# Draft tokens per step at most: the draft grows to this while drafts are kept whole.
DEFAULT_NUM_DRAFT = 8


def _speculative(asked: str | os.PathLike[str] | None, num_draft: int | None, config: Config,
                 backend: str) -> tuple[int, Path | None]:
    """The draft tokens per step the core may propose (0: no speculative decoding), and the
    draft model's file (None: drafts from prompt lookup)."""
    mode = config.speculative if asked is None else asked
    if isinstance(mode, os.PathLike):
        mode = os.fspath(mode)
    if not isinstance(mode, str) or not mode:
        raise ValueError(f"speculative must be 'ngram', 'off' or a draft model, got {mode!r}")
    if num_draft is not None and (isinstance(num_draft, bool) or not isinstance(num_draft, int)
                                  or not 1 <= num_draft <= 64):
        raise ValueError(f"num_draft must be an integer within [1, 64], got {num_draft!r}")
    if mode == "off":
        return 0, None
    if backend == "mlx":
        if asked is not None:
            raise ValueError("speculative decoding runs on the native backends (CPU, CUDA); "
                             "the MLX backend decodes one token per step")
        return 0, None
    draft = None
    if mode not in SPECULATIVE:
        if backend != "native":
            raise ValueError("a draft model runs with the native CPU backend only")
        draft = resolve_model_path(mode)  # a GGUF path or a store name, as `model` is
    return num_draft or DEFAULT_NUM_DRAFT, draft


def _kv_type(asked: str | None, config: Config, backend: str) -> str:
    """The KV cache type an engine of ``backend`` uses: ``asked``, else the configuration's."""
    kv_type = config.kv_cache_type if asked is None else asked
    if kv_type not in KV_CACHE_TYPES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_type!r}")
    if kv_type != "f16" and backend != "native":
        if asked is not None:
            raise ValueError(f"a {kv_type} KV cache runs on the native CPU backend only; the "
                             f"{backend} backend keeps f16 keys and values")
        log.warning("the %s backend keeps an f16 KV cache; the environment's %s is ignored",
                    backend, kv_type)
        kv_type = "f16"
    return kv_type


class Engine:
    """A loaded model and the scheduler that serves it.

    ``Engine(model, n_threads=None, n_ctx=4096)``: ``model`` is a GGUF path or a name such as
    ``gemma3:1b`` that the store resolves (``pyengine.gateway.store``); ``n_ctx`` is a
    request's default context (a request may ask for more with ``num_ctx``, up to the model's
    training context, without a reload). Every sequence's keys and values live in one paged
    cache of ``kv_cache_mb`` MiB that also keeps finished prompts' blocks for reuse
    (``prefix_cache``). Calls from many threads (and asyncio tasks, through
    ``astream``/``agenerate``/``achat``) run together: each native step batches every running
    sequence's next token with chunks of waiting prompts, at most ``max_batch`` sequences and
    ``max_batch_tokens`` tokens per step; an idle engine waits ``batch_wait_ms`` for company.
    Settings left at None come from ``config`` (default ``Config.from_env()``: the
    environment's ``MAX_CACHE_SIZE_MB``, ``ENABLE_BATCHED_INFERENCE`` (off: ``max_batch`` 1),
    ``ENABLE_PROMPT_CACHE`` and ``ENABLE_KV_CACHE``).

    ``backend``: ``"native"`` (the C++ core on the CPU), ``"cuda"`` (the C++ core's forward
    pass on a CUDA GPU: a build with ``PYENGINE_CUDA``), ``"mlx"`` (mlx-lm on MLX: Apple GPUs,
    or ``mlx[cpu]``; needs ``pyengine[mlx]``), or ``"auto"`` (MLX on Apple silicon when
    installed, CUDA when a GPU is present, else native; the default, from
    ``PYENGINE_BACKEND``). Both backends tokenize, sample
    and stream with the same native code, so they differ only in the logits. ``dtype`` is the
    MLX weights' float type (``float32``, ``float16``, ``bfloat16``; default: the file's). With
    MLX, ``model`` may also be a folder in mlx-lm's layout, and ``n_threads`` and
    ``batch_wait_ms`` do not apply.

    ``kv_type``: how the KV cache stores keys and values on the CPU: ``"f16"``, ``"q8_0"`` or
    ``"q4_0"`` (llama.cpp's blocks of 32 values with one scale; the same ``kv_cache_mb`` holds
    1.9x or 3.6x the positions); default from ``PYENGINE_KV_CACHE_TYPE`` or
    ``OLLAMA_KV_CACHE_TYPE``, else f16. The CUDA and MLX backends keep f16 (asking them for
    another type is an error; from the environment it is ignored with a warning).

    ``prompt_cache``: a folder (default ``PYENGINE_PROMPT_CACHE``) where full KV blocks of
    prefixes worth keeping (served from memory twice, or of a request with ``keep=True``) are
    written, so that a restarted engine reads them back instead of computing them; at most
    ``prompt_cache_mb`` MiB per model and KV type (default 4096), least recently used first
    out. A truncated, tampered or foreign file is ignored (``prompt_cache_rejected``).

    ``speculative``: ``"ngram"`` (default, from ``PYENGINE_SPECULATIVE``) lets a decoding
    sequence bring up to ``num_draft`` (default 8) draft tokens a step: the tokens that followed
    the latest earlier occurrence of its last 2 to 4 tokens in its own prompt and output. The
    model scores them in the same step and the sequence keeps them as long as sampling agrees,
    so the output is the one decoding without drafts gives (greedy, and seeded sampling),
    only sooner where the output copies. A model file or store name instead (the same
    vocabulary, e.g. ``gemma3:270m`` for a larger Gemma 3) drafts that model's greedy
    continuation, its keys and values in its share of ``kv_cache_mb`` (split so that both
    models hold as many positions; native CPU backend). Drafts are proposed while a step decodes at most 4 sequences and no prompt is
    computing; ``"off"`` never; a request's ``speculative=False`` opts out. ``stats()``:
    ``drafted``, ``draft_accepted``, ``draft_steps``, ``draft_failures``.
    """

    def __init__(self, model: str | os.PathLike[str], n_threads: int | None = None,
                 n_ctx: int = 4096, kv_cache_mb: float | None = None,
                 max_batch: int | None = None, max_batch_tokens: int = 512,
                 batch_wait_ms: float = 0.0, prefix_cache: bool | None = None,
                 config: Config | None = None, backend: str | None = None,
                 dtype: str | None = None, kv_type: str | None = None,
                 prompt_cache: str | os.PathLike[str] | None = None,
                 prompt_cache_mb: float | None = None, speculative: str | None = None,
                 num_draft: int | None = None) -> None:
        config = config or Config.from_env()
        self.backend = pick_backend(backend or config.backend)
        self.kv_type = _kv_type(kv_type, config, self.backend)
        self.num_draft, self.draft_model = _speculative(speculative, num_draft, config,
                                                        self.backend)
        if dtype is not None and self.backend != "mlx":
            raise ValueError("dtype chooses the MLX weights' type; the native backend runs the "
                             "file's own")
        if max_batch is None:
            max_batch = 16 if config.enable_batched_inference else 1
        if prefix_cache is None:
            prefix_cache = config.prefix_reuse
        if kv_cache_mb is None:
            kv_cache_mb = config.max_cache_size_mb
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 0):
            raise ValueError(f"n_threads must be a non-negative integer, got {n_threads!r}")
        _positive_int("n_ctx", n_ctx)
        _positive_int("max_batch", max_batch)
        _positive_int("max_batch_tokens", max_batch_tokens)
        if max_batch_tokens < max_batch:
            raise ValueError("max_batch_tokens must be at least max_batch")
        if isinstance(kv_cache_mb, bool) or not isinstance(kv_cache_mb, (int, float)) \
                or not kv_cache_mb > 0 or kv_cache_mb > 2**40:
            raise ValueError(f"kv_cache_mb must be a positive number, got {kv_cache_mb!r}")
        if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float)) \
                or not 0 <= batch_wait_ms <= 10_000:
            raise ValueError(f"batch_wait_ms must be within [0, 10000], got {batch_wait_ms!r}")
        if prompt_cache is None:
            prompt_cache = config.prompt_cache
        if prompt_cache_mb is None:
            prompt_cache_mb = config.prompt_cache_mb
        if prompt_cache is not None and self.backend == "mlx":
            raise ValueError("the prompt cache on disk needs the native backend")
        if isinstance(prompt_cache_mb, bool) or not isinstance(prompt_cache_mb, (int, float)) \
                or not prompt_cache_mb > 0:
            raise ValueError(f"prompt_cache_mb must be a positive number, got {prompt_cache_mb!r}")
        if self.backend == "mlx" and Path(model).is_dir():
            self.path = Path(model)  # an MLX model folder
        else:
            self.path = resolve_model_path(model)
        t0 = time.perf_counter_ns()
        self.prompt_cache: Path | None = None  # this model's folder of the prompt cache
        self._core: BackendCore
        if self.backend == "mlx":
            self._core = mlx_backend.core_class()(
                self.path, n_ctx=n_ctx, max_batch=max_batch, max_batch_tokens=max_batch_tokens,
                kv_cache_bytes=int(kv_cache_mb * 2**20), prefix_cache=bool(prefix_cache),
                dtype=dtype)
        else:
            disk: dict[str, Any] = {}
            if prompt_cache is not None:
                digest = model_digest(self.path)  # reads samples of the file: once
                self.prompt_cache = cache_folder(prompt_cache, digest, self.kv_type)
                disk = {"prompt_cache_dir": str(self.prompt_cache), "model_id": digest,
                        "prompt_cache_bytes": int(prompt_cache_mb * 2**20)}
            self._core = _core.Engine(str(self.path), n_ctx=n_ctx, n_threads=n_threads or 0,
                                      kv_cache_bytes=int(kv_cache_mb * 2**20),
                                      max_batch=max_batch, max_batch_tokens=max_batch_tokens,
                                      batch_wait_ms=float(batch_wait_ms),
                                      prefix_cache=bool(prefix_cache),
                                      device="cuda" if self.backend == "cuda" else "cpu",
                                      kv_type=self.kv_type, num_draft=self.num_draft,
                                      draft_model=str(self.draft_model or ""), **disk)
        self.load_duration = time.perf_counter_ns() - t0
        # The architecture picks the chat format and the tool-call syntax (chat.format_chat).
        self.arch: str = str(self._core.config.get("arch", "gemma3"))
        self._pump = ReadyPump(self._core)
        # Kept for the engine's life: the scheduler calls its solver while requests run.
        self._grammars = Grammars(self._core)

    def close(self) -> None:
        """Stops the scheduler; requests still in flight end with ``PyEngineError``."""
        self._pump.close()
        self._core.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def config(self) -> dict[str, Any]:
        """The model's hyper-parameters as read from the file."""
        return self._core.config

    @property
    def n_ctx(self) -> int:
        return self._core.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    def stats(self) -> dict[str, int]:
        """Counters of the scheduler and the KV cache.

        ``running``/``waiting`` sequences; ``steps``, ``step_tokens``, ``step_sequences``
        (mean batch = step_sequences / steps), ``max_step_sequences``, ``decode_tokens``,
        ``prompt_tokens``, ``preemptions``, ``finished``, ``cancelled``, ``failed``;
        speculative decoding: ``draft_steps`` (sequence steps that scored drafts), ``drafted``
        (draft tokens scored), ``draft_accepted`` (of those, kept); KV pages
        (one layer's keys and values for ``kv_block_tokens`` positions, ``kv_page_bytes``
        each): ``kv_pages_total`` = ``kv_pages_free`` + ``kv_pages_cached`` (unreferenced,
        kept for prefix reuse, evictable) + ``kv_pages_used``; ``kv_blocks_cached``,
        ``prefix_query_tokens``, ``prefix_hit_tokens``, ``kv_evictions``.
        """
        return self._core.stats()

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to token ids, as llama.cpp tokenizes it (``special``: parse control-token text)."""
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        return self._core.tokenize(text, add_bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Token ids to text (control tokens render as nothing)."""
        return self._core.detokenize(list(ids), False)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits of ``ids`` as a fresh sequence: float32 ``[len(ids), n_vocab]``."""
        return self._core.logits(list(ids))

    def embed(self, text_or_ids: Prompt, normalize: bool = True) -> np.ndarray:
        """An embedding of a text (tokenized with BOS) or of token ids: float32 ``[n_embd]``.

        The mean over every position of the final normed hidden state (what llama.cpp pools
        with mean pooling), scaled to unit length unless ``normalize`` is False. Runs through
        the scheduler like any request (batched with others; no prefix reuse).
        """
        ids = self.tokenize(text_or_ids) if isinstance(text_or_ids, str) \
            else self._prompt_ids(text_or_ids)
        v = self._core.embed(ids)
        if normalize:
            norm = float(np.linalg.norm(v))
            if norm > 0:
                v = v / norm
        return v.astype(np.float32, copy=False)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            # Raw completion prompts may carry turn markers written as text.
            return self.tokenize(prompt, add_bos=True, special=True)
        ids = list(prompt)
        if not all(isinstance(t, (int, np.integer)) for t in ids):
            raise TypeError("prompt must be a str or a sequence of token ids")
        return [int(t) for t in ids]

    def _submit(self, prompt_or_ids: Prompt, options: dict[str, Any], notify: bool) -> Any:
        fmt = options.pop("format", None)
        opts = GenerateOptions.from_kwargs(**options)
        ids = self._prompt_ids(prompt_or_ids)
        constraint = None
        if fmt is not None:
            # The tokens it may sample: max_tokens, else what its context leaves.
            room = (opts.num_ctx or self.n_ctx) - len(ids)
            budget = min(opts.max_tokens, room) if opts.max_tokens >= 0 else room
            constraint = self._grammars.constraint(fmt, budget)
        extra: dict[str, bool] = {}  # what only the native cores take
        if opts.keep and self.backend != "mlx":
            extra["keep"] = True
        if not opts.speculative and self.backend != "mlx":
            extra["speculative"] = False
        return self._core.submit(ids, opts.native(), opts.num_ctx or 0, notify,
                                 constraint=constraint, **extra)

    def stream(self, prompt_or_ids: Prompt, timeout: float | None = None,
               **options: Any) -> Iterator[Chunk]:
        """Generates token by token, yielding ``Chunk``s whose text never splits a character.

        Options: max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        presence_penalty, frequency_penalty, seed, stop, ignore_eos, num_ctx (or an Ollama
        ``options`` dict). The final chunk has ``done=True`` and carries the ``Completion``.
        Closing the iterator early cancels the request and frees its KV blocks. With
        ``timeout`` (seconds, for the whole request) a request still running then is cancelled
        and ``TimeoutError`` raised.
        """
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        t0 = time.perf_counter_ns()
        # Submitted here, not inside the generator, so a bad prompt raises at the call.
        req = self._submit(prompt_or_ids, options, notify=False)
        deadline = None if timeout is None else t0 + int(timeout * 1e9)
        return _Stream(self._run(req, t0, deadline), req)

    @staticmethod
    def _chunk(req: Any, step: tuple, parts: list[str], tokens: list[int], t0: int) -> Chunk:
        token, text, done, reason = step
        parts.append(text)
        if token >= 0:
            tokens.append(token)
        if not done:
            return Chunk(text=text, token=token)
        c = req.counts
        completion = Completion(
            text="".join(parts), tokens=list(tokens), done_reason=reason or "stop",
            prompt_eval_count=c["prompt_eval_count"], eval_count=c["eval_count"],
            prompt_eval_duration=c["prompt_eval_duration"], eval_duration=c["eval_duration"],
            total_duration=time.perf_counter_ns() - t0, load_duration=0,
            cached_tokens=c["cached_tokens"])
        return Chunk(text=text, token=token, done=True, done_reason=completion.done_reason,
                     completion=completion)

    def _run(self, req: Any, t0: int, deadline: int | None = None) -> Iterator[Chunk]:
        parts: list[str] = []
        tokens: list[int] = []
        try:
            while True:
                if deadline is None:
                    step = req.next()
                else:
                    left_ns = deadline - time.perf_counter_ns()
                    if left_ns <= 0:
                        raise TimeoutError(f"the request ran past its {(deadline - t0) / 1e9:g} s "
                                           "time-out and was cancelled")
                    step = req.next(-(-left_ns // 1_000_000))  # whole ms, rounded up
                    if step is None:
                        continue
                chunk = self._chunk(req, step, parts, tokens, t0)
                yield chunk
                if chunk.done:
                    return
        finally:
            if not req.finished:
                req.cancel()

    async def astream(self, prompt_or_ids: Prompt, **options: Any) -> AsyncIterator[Chunk]:
        """``stream`` for asyncio: ``async for chunk in eng.astream(...)``.

        Waiting never blocks the event loop; cancelling the task or closing the iterator
        cancels the request and frees its KV blocks.
        """
        t0 = time.perf_counter_ns()
        req = self._submit(prompt_or_ids, options, notify=True)
        event = asyncio.Event()
        self._pump.register(req.id, event)
        parts: list[str] = []
        tokens: list[int] = []
        try:
            while True:
                event.clear()
                steps = req.poll()
                if not steps:
                    await event.wait()
                    continue
                for step in steps:
                    chunk = self._chunk(req, step, parts, tokens, t0)
                    yield chunk
                    if chunk.done:
                        return
        finally:
            self._pump.unregister(req.id)
            if not req.finished:
                req.cancel()

    async def agenerate(self, prompt_or_ids: Prompt, **options: Any) -> Completion:
        """``generate`` for asyncio."""
        async for chunk in self.astream(prompt_or_ids, **options):
            if chunk.done:
                assert chunk.completion is not None
                return chunk.completion
        raise RuntimeError("generation ended without a final chunk")  # unreachable

    async def achat(self, messages: Sequence[Mapping[str, Any]], tools: Any = None,
                    tool_choice: Any = None, parallel_tool_calls: bool = True,
                    **options: Any) -> Completion:
        """``chat`` for asyncio."""
        ids, fmt = self._chat_request(messages, tools, tool_choice, parallel_tool_calls,
                                      options.pop("format", None))
        c = await self.agenerate(ids, format=fmt, **options)
        return with_tool_calls(c, self.arch) if tools else c

    def generate(self, prompt_or_ids: Prompt, max_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.9, min_p: float = 0.0,
                 repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: str | Sequence[str] = (), ignore_eos: bool = False,
                 **options: Any) -> Completion:
        """Generates a completion of a raw prompt (text or token ids); see ``stream``."""
        chunks = self.stream(prompt_or_ids, max_tokens=max_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, min_p=min_p,
                             repeat_penalty=repeat_penalty, seed=seed, stop=stop,
                             ignore_eos=ignore_eos, **options)
        for chunk in chunks:
            if chunk.done:
                assert chunk.completion is not None
                return chunk.completion
        raise RuntimeError("generation ended without a final chunk")  # unreachable

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of ``messages`` in the model's chat format (``chat.format_chat`` for its
        architecture), ready for the model's reply."""
        return self.tokenize(format_chat(messages, self.arch), add_bos=True, special=True)

    def _chat_request(self, messages: Sequence[Mapping[str, Any]], tools: Any,
                      tool_choice: Any, parallel_tool_calls: bool, fmt: Any
                      ) -> tuple[list[int], Any]:
        # The prompt's token ids and the reply's format, tools rendered the model's way.
        text, fmt = plan_prompt(messages, tools, tool_choice, parallel_tool_calls, fmt,
                                arch=self.arch)
        return self.tokenize(text, add_bos=True, special=True), fmt

    def chat(self, messages: Sequence[Mapping[str, Any]], tools: Any = None,
             tool_choice: Any = None, parallel_tool_calls: bool = True,
             **options: Any) -> Completion:
        """Replies to Ollama-style chat ``messages`` in the model's chat format (Gemma 3's folds
        a system message into the first user turn; Gemma 4's has a system role and its own
        tool calls, which come back as the same ``ToolCall`` objects).

        ``format``: "json", a JSON Schema or a ``structured.Grammar`` the reply follows.
        ``tools``: functions the reply may call (OpenAI's and Ollama's shape); the reply is
        then plain text or calls of them (``Completion.tool_calls``, text ""). ``tool_choice``:
        "auto", "none", "required" or ``{"type": "function", "function": {"name": ...}}``;
        ``parallel_tool_calls=False`` allows one call. See ``pyengine.structured``.
        """
        ids, fmt = self._chat_request(messages, tools, tool_choice, parallel_tool_calls,
                                      options.pop("format", None))
        c = self.generate(ids, format=fmt, **options)
        return with_tool_calls(c, self.arch) if tools else c

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], tools: Any = None,
                    tool_choice: Any = None, parallel_tool_calls: bool = True,
                    **options: Any) -> Iterator[Chunk]:
        """Streams the reply to ``messages``; see ``stream`` and ``chat``. A reply that calls
        tools streams no text: its final chunk's completion carries the calls."""
        ids, fmt = self._chat_request(messages, tools, tool_choice, parallel_tool_calls,
                                      options.pop("format", None))
        chunks = self.stream(ids, format=fmt, **options)
        return _CallStream(chunks, self.arch) if tools else chunks


def with_tool_calls(c: Completion, arch: str = "gemma3") -> Completion:
    """A reply made under a tool grammar, its calls parsed out of its text (then ""); the
    call syntax is that of the model's architecture (``arch``)."""
    text, calls = parse_reply(c.text, arch)
    return dataclasses.replace(c, text=text, tool_calls=calls)


class _CallStream:
    """A chat stream under a tool grammar (``CallFilter``): text passes as it comes, a call's
    JSON stays out of the chunks; the final chunk's completion carries the parsed calls.
    Closing it cancels the request."""

    def __init__(self, chunks: Any, arch: str = "gemma3") -> None:
        self._chunks = chunks
        self._arch = arch
        self._filter = CallFilter(True, arch)

    def __iter__(self) -> "_CallStream":
        return self

    def __next__(self) -> Chunk:
        chunk = next(self._chunks)
        if chunk.done and chunk.completion is not None:
            chunk = dataclasses.replace(chunk, completion=with_tool_calls(chunk.completion,
                                                                          self._arch))
        passed = self._filter.piece(chunk.text, lambda _text: chunk)
        return passed if passed is not None else dataclasses.replace(chunk, text="")

    def close(self) -> None:
        self._chunks.close()
