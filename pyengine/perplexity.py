"""Perplexity of a model on a text, computed as llama.cpp's ``llama-perplexity`` computes it.

The rules (llama.cpp's ``tools/perplexity/perplexity.cpp``, default mode), so that numbers from
the two engines on the same file and text can be compared:

- The text is tokenized once, with the vocabulary's special tokens added (BOS for Gemma) and
  control-token text left as plain text. The command line reads the file as bytes and drops one
  trailing newline, as ``llama-perplexity -f`` does.
- At least ``2 * n_ctx`` tokens are required. The tokens are cut into ``len(tokens) // n_ctx``
  back-to-back chunks of ``n_ctx`` tokens (at most ``n_chunks`` of them); the remainder is
  dropped.
- Each chunk is evaluated as a fresh sequence whose first token is replaced by BOS (when the
  vocabulary adds one). Only the second half of the window is scored: the logits at positions
  ``first = n_ctx // 2`` to ``n_ctx - 2`` predict the chunk's tokens ``first + 1`` to
  ``n_ctx - 1``, so a chunk scores ``n_ctx - first - 1`` tokens, each with at least ``first``
  tokens of context.
- A token's negative log-likelihood is ``-(z[t] - max(z) - log(sum(exp(z - max(z)))))`` with
  the maximum and each ``exp`` in float32 and the sum and the log in float64.
- After each chunk the running estimate ``exp(sum(nll) / count)`` is printed. The final estimate
  is that perplexity, with the uncertainty ``ppl * sqrt(var(nll) / (count - 1))`` (the variance
  over every scored token, divided by ``count``).

llama.cpp evaluates ``n_batch / n_ctx`` chunks per batch as separate sequences; each chunk sees
only its own tokens either way, so that grouping does not change the mathematics. Here one
chunk is evaluated at a time, and only its logits (``n_ctx x n_vocab`` float32, as llama.cpp
holds) are in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_N_CTX = 512  # llama-perplexity's default context
# Rows whose exponentials are formed at once: bounds the temporary to ROW_BLOCK x n_vocab floats.
ROW_BLOCK = 32

LogitsFn = Callable[[list[int]], np.ndarray]
ChunkCallback = Callable[[int, float], None]


@dataclass
class PerplexityResult:
    """What a perplexity run measured.

    ``running_ppl[i]`` is the estimate over chunks ``0..i`` (what llama-perplexity prints as
    ``[i+1]value``); ``chunk_ppl[i]`` is chunk ``i``'s own perplexity. ``ppl_error`` is the
    final estimate's uncertainty, None where it is undefined (fewer than two scored tokens, or
    no positive variance: llama-perplexity prints an error there).
    """

    n_ctx: int
    n_tokens: int
    n_chunks: int
    n_scored: int
    ppl: float
    ppl_error: float | None
    nll_mean: float
    running_ppl: list[float] = field(default_factory=list)
    chunk_ppl: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def read_text_file(path: str | Path) -> str:
    """The text of ``path`` as ``llama-perplexity -f`` reads it: bytes as they are (no newline
    translation), less one trailing newline."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"text file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None
    return text.removesuffix("\n")


def eta_text(seconds_per_chunk: float, n_chunks: int) -> str:
    """llama-perplexity's ETA after the first chunk: ``[H hours ]M.MM minutes``."""
    total = int(seconds_per_chunk * n_chunks)
    hours = f"{total // 3600} hours " if total >= 3600 else ""
    return f"{hours}{total % 3600 / 60:.2f} minutes"


def check_n_ctx(n_ctx: int) -> int:
    """``n_ctx`` as a chunk length, or ``ValueError``: a chunk must score at least one token."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 3:
        raise ValueError(f"the context (--ctx) must be an integer of at least 3 (a chunk scores "
                         f"its last n_ctx - n_ctx/2 - 1 tokens), got {n_ctx!r}")
    return n_ctx


def count_chunks(n_tokens: int, n_ctx: int, n_chunks: int | None = None) -> int:
    """How many chunks llama-perplexity evaluates for ``n_tokens`` tokens (BOS included).

    Raises ``ValueError`` when the text holds fewer than ``2 * n_ctx`` tokens (llama.cpp's
    minimum, whatever ``n_chunks`` asks) or ``n_chunks`` is not positive.
    """
    check_n_ctx(n_ctx)
    if n_chunks is not None and (isinstance(n_chunks, bool) or not isinstance(n_chunks, int)
                                 or n_chunks < 1):
        raise ValueError(f"the number of chunks must be a positive integer, got {n_chunks!r}")
    if n_tokens < 2 * n_ctx:
        raise ValueError(f"the text tokenizes to only {n_tokens} tokens; perplexity with a "
                         f"context of {n_ctx} needs at least {2 * n_ctx}")
    n_max = n_tokens // n_ctx
    return n_max if n_chunks is None else min(n_chunks, n_max)


def chunk_ids(tokens: Sequence[int], index: int, n_ctx: int, bos: int | None) -> list[int]:
    """Chunk ``index``: ``tokens[index*n_ctx : (index+1)*n_ctx]`` with its first token replaced
    by ``bos`` (kept when ``bos`` is None: a vocabulary that adds no BOS)."""
    start = index * n_ctx
    ids = [int(t) for t in tokens[start:start + n_ctx]]
    if len(ids) != n_ctx:
        raise ValueError(f"chunk {index} of {n_ctx} tokens runs past the {len(tokens)} tokens")
    if bos is not None:
        ids[0] = bos
    return ids


def token_nll(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ``targets[i]`` under row ``i`` of ``logits``, float64.

    llama.cpp's arithmetic: the maximum, the differences and their ``exp`` in float32, their
    sum and its log in float64.
    """
    z = np.asarray(logits)
    if z.dtype != np.float32:
        z = z.astype(np.float32)
    tgt = np.asarray(targets, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != len(tgt):
        raise ValueError(f"logits of shape {z.shape} do not match {len(tgt)} targets")
    out = np.empty(len(tgt), dtype=np.float64)
    for lo in range(0, len(tgt), ROW_BLOCK):
        block = z[lo:lo + ROW_BLOCK]
        shifted = block - block.max(axis=1, keepdims=True)             # float32, as in C
        log_sum = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
        picked = shifted[np.arange(len(block)), tgt[lo:lo + ROW_BLOCK]].astype(np.float64)
        out[lo:lo + len(block)] = log_sum - picked
    return out


class NllAccumulator:
    """Running sums of the scored tokens' NLL and NLL squared, and the estimates from them."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.nll2 = 0.0
        self.count = 0

    def add(self, nll: np.ndarray) -> None:
        """Adds one chunk's per-token NLL values."""
        self.nll += float(nll.sum())
        self.nll2 += float(np.dot(nll, nll))
        self.count += len(nll)

    def ppl(self) -> float:
        """``exp(mean NLL)`` so far."""
        return math.exp(self.nll / self.count)

    def estimate(self) -> tuple[float, float | None]:
        """(perplexity, its uncertainty or None), as llama-perplexity's final estimate."""
        mean = self.nll / self.count
        ppl = math.exp(mean)
        var = self.nll2 / self.count - mean * mean
        if var > 0 and self.count > 1:
            return ppl, math.sqrt(var / (self.count - 1)) * ppl
        return ppl, None


def special_bos(tokenize: Callable[[str, bool], list[int]]) -> int | None:
    """The BOS id the tokenizer adds with its special tokens, or None when it adds none.

    Raises ``ValueError`` when it also adds an EOS (llama-perplexity refuses such vocabularies).
    """
    with_special, plain = tokenize("x", True), tokenize("x", False)
    if with_special == plain:
        return None
    if with_special[1:] == plain:
        return int(with_special[0])
    raise ValueError("the vocabulary appends an EOS token to every text; llama-perplexity "
                     "refuses such models, so no comparable perplexity exists")


def perplexity_of_tokens(logits_of: LogitsFn, tokens: Sequence[int], n_ctx: int,
                         bos: int | None, n_chunks: int | None = None,
                         on_chunk: ChunkCallback | None = None) -> PerplexityResult:
    """Perplexity of ``tokens`` (the whole text, BOS included) from ``logits_of(ids)``: the
    teacher-forced logits ``[len(ids), n_vocab]`` of ``ids`` as a fresh sequence.

    ``on_chunk(i, running_ppl)`` is called after each chunk. One chunk's logits are held at a
    time.
    """
    n = count_chunks(len(tokens), n_ctx, n_chunks)
    first = n_ctx // 2
    acc = NllAccumulator()
    running, own = [], []
    for i in range(n):
        ids = chunk_ids(tokens, i, n_ctx, bos)
        logits = logits_of(ids)
        if logits.shape[0] != n_ctx:
            raise ValueError(f"logits_of returned {logits.shape[0]} rows for {n_ctx} ids")
        # Row p predicts the chunk's original token p + 1 (never the BOS put at position 0).
        targets = tokens[i * n_ctx + first + 1:(i + 1) * n_ctx]
        nll = token_nll(logits[first:n_ctx - 1], targets)
        del logits  # the next chunk's logits replace these
        acc.add(nll)
        own.append(math.exp(float(nll.mean())))
        running.append(acc.ppl())
        if on_chunk is not None:
            on_chunk(i, running[-1])
    ppl, err = acc.estimate()
    return PerplexityResult(n_ctx=n_ctx, n_tokens=len(tokens), n_chunks=n, n_scored=acc.count,
                            ppl=ppl, ppl_error=err, nll_mean=acc.nll / acc.count,
                            running_ppl=running, chunk_ppl=own)


def perplexity(engine: Any, text: str, n_ctx: int = DEFAULT_N_CTX, n_chunks: int | None = None,
               on_chunk: ChunkCallback | None = None) -> PerplexityResult:
    """Perplexity of ``engine`` (a ``pyengine.Engine``) on ``text``, as llama-perplexity
    computes it with ``-c n_ctx`` (and ``--chunks n_chunks``).

    The engine's context must hold ``n_ctx`` tokens (``Engine(..., n_ctx=n_ctx)``).
    """
    check_n_ctx(n_ctx)
    if engine.n_ctx < n_ctx:
        raise ValueError(f"the engine's context is {engine.n_ctx} tokens, less than the "
                         f"perplexity context {n_ctx} (the model's training context caps it)")
    tokens = engine.tokenize(text, add_bos=True, special=False)
    bos = special_bos(lambda t, add: engine.tokenize(t, add_bos=add, special=False))
    return perplexity_of_tokens(engine.logits, tokens, n_ctx, bos, n_chunks, on_chunk)
