"""The public ``Engine``: load a Gemma GGUF model, tokenize, score and generate."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from . import _core
from .chat import format_gemma
from .options import GenerateOptions

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


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """Maps a model argument to a GGUF file path (plain paths for now)."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {model} (expected a GGUF file path)")
    return path


class Engine:
    """A loaded model.

    ``Engine(model, n_threads=None, n_ctx=4096)``: ``model`` is a GGUF path. Methods may be
    called from several threads; each native call runs with the GIL released.
    """

    def __init__(self, model: str | os.PathLike[str], n_threads: int | None = None,
                 n_ctx: int = 4096) -> None:
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 0):
            raise ValueError(f"n_threads must be a non-negative integer, got {n_threads!r}")
        if not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.path = resolve_model_path(model)
        t0 = time.perf_counter_ns()
        self._core = _core.Engine(str(self.path), n_ctx=n_ctx, n_threads=n_threads or 0)
        self.load_duration = time.perf_counter_ns() - t0

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

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            # Raw completion prompts may carry turn markers written as text.
            return self.tokenize(prompt, add_bos=True, special=True)
        ids = list(prompt)
        if not all(isinstance(t, (int, np.integer)) for t in ids):
            raise TypeError("prompt must be a str or a sequence of token ids")
        return [int(t) for t in ids]

    def stream(self, prompt_or_ids: Prompt, **options: Any) -> Iterator[Chunk]:
        """Generates token by token, yielding ``Chunk``s whose text never splits a character.

        Options: max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        presence_penalty, frequency_penalty, seed, stop, ignore_eos (or an Ollama ``options``
        dict). The final chunk has ``done=True`` and carries the ``Completion``.
        """
        opts = GenerateOptions.from_kwargs(**options)
        ids = self._prompt_ids(prompt_or_ids)
        t0 = time.perf_counter_ns()
        # Created here, not inside the generator, so a bad prompt raises at the call.
        gen = _core.Generation(
            self._core, ids, opts.temperature, opts.top_k, opts.top_p, opts.min_p,
            opts.repeat_penalty, opts.repeat_last_n, opts.presence_penalty,
            opts.frequency_penalty, opts.native_seed(), opts.max_tokens, list(opts.stop),
            opts.ignore_eos)
        return self._run(gen, t0)

    def _run(self, gen: Any, t0: int) -> Iterator[Chunk]:
        parts: list[str] = []
        while True:
            token, text, done, reason = gen.next()
            parts.append(text)
            if not done:
                yield Chunk(text=text, token=token)
                continue
            completion = Completion(
                text="".join(parts), tokens=list(gen.tokens), done_reason=reason or "stop",
                prompt_eval_count=gen.prompt_eval_count, eval_count=gen.eval_count,
                prompt_eval_duration=gen.prompt_eval_duration, eval_duration=gen.eval_duration,
                total_duration=time.perf_counter_ns() - t0, load_duration=0)
            yield Chunk(text=text, token=token, done=True, done_reason=completion.done_reason,
                        completion=completion)
            return

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
        """Token ids of ``messages`` in Gemma's turn format, ready for the model's reply."""
        return self.tokenize(format_gemma(messages), add_bos=True, special=True)

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> Completion:
        """Replies to Ollama-style chat ``messages`` (system folded into the first user turn)."""
        return self.generate(self.chat_prompt(messages), **options)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> Iterator[Chunk]:
        """Streams the reply to ``messages``; see ``stream``."""
        return self.stream(self.chat_prompt(messages), **options)
