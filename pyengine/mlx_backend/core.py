"""The MLX backend's core: the surface of the native ``_core.Engine``, computed by mlx-lm.

``Engine(..., backend="mlx")`` holds an ``MlxCore`` where it would hold the native core, so
streaming, asyncio, chat and the server work unchanged. Tokenizing, sampling, stop strings and
streamed text stay native (``_core.ModelFile`` and its ``Generation``): both backends produce
the same tokens from the same logits. One worker thread per process makes every MLX call (see
``_Worker``). Each round it admits an engine's waiting requests, reads one prompt chunk (up to
``max_batch_tokens``) of every sequence still reading its prompt, then runs one step of
mlx-lm's ``BatchGenerator``: every generating sequence's next token in one forward pass
(continuous batching). The native ``Generation`` samples inside the generator, as its logits
processor. mlx-lm's ``LRUPromptCache`` keeps finished sequences' caches and prompt checkpoints
at 16-token boundaries; later prompts sharing a prefix start from them.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import (LRUPromptCache, RotatingKVCache, can_trim_prompt_cache,
                                 trim_prompt_cache)

from pyengine import _core
from pyengine.errors import PyEngineError
from pyengine.mlx_backend import convert, load

CHECKPOINT_TOKENS = 16  # prompt caches are kept at multiples of this, as the native blocks
_COUNTERS = ("steps", "decode_steps", "step_tokens", "step_sequences", "decode_tokens",
             "prompt_tokens", "preemptions", "finished", "cancelled", "failed",
             "prefix_query_tokens", "prefix_hit_tokens", "kv_evictions")


def _snapshot(cache: list[Any]) -> list[Any]:
    """A copy of a sequence's cache that its further steps cannot change.

    A full-attention cache only appends past its offset, so a shallow copy (sharing the
    arrays, keeping the offset) stays valid; a sliding-window cache overwrites old positions in
    place and is copied whole (it is at most a window long).
    """
    return [copy.deepcopy(c) if isinstance(c, RotatingKVCache) else copy.copy(c) for c in cache]


class MlxRequest:
    """What a caller holds: the request's steps as a queue, its counts and cancellation."""

    def __init__(self, rid: int, core: "MlxCore", notify: bool) -> None:
        self.id = rid
        self._core = core
        self._notify = notify
        self._cond = threading.Condition()
        self._steps: deque[tuple] = deque()
        self._finished = False
        self._error = ""
        self.cancelled = False
        self._counts = {"prompt_tokens": 0, "prompt_eval_count": 0, "cached_tokens": 0,
                        "eval_count": 0, "prompt_eval_duration": 0, "eval_duration": 0,
                        "preemptions": 0}
        self.result: np.ndarray | None = None  # scoring requests: logits or embedding

    # Caller side.
    def next(self, timeout_ms: int = -1) -> tuple | None:
        with self._cond:
            if not self._steps:
                self._cond.wait(None if timeout_ms < 0 else timeout_ms / 1000)
            if not self._steps:
                return None
            return self._checked(self._steps.popleft())

    def poll(self) -> list[tuple]:
        with self._cond:
            steps, self._steps = list(self._steps), deque()
        return [self._checked(s) for s in steps]

    def cancel(self) -> None:
        self.cancelled = True
        self._core._wake()

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._finished

    @property
    def counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._counts)

    def _checked(self, step: tuple) -> tuple:
        if step[2] and step[3] == "error":
            raise PyEngineError(self._error)
        return step

    # Scheduler side.
    def _push(self, step: tuple, counts: dict[str, int] | None = None) -> None:
        with self._cond:
            if counts:
                self._counts.update(counts)
            self._steps.append(step)
            self._finished = self._finished or step[2]
            self._cond.notify_all()
        if self._notify:
            self._core._ready(self.id)

    def _fail(self, error: str) -> None:
        self._error = error
        self._push((-1, "", True, "error"))


@dataclass
class _Seq:
    """A running request on the scheduler thread."""

    req: MlxRequest
    kind: str                      # "generate", "logits" or "embed"
    prompt: list[int]
    gen: Any = None                # _core.Generation (generate only)
    cache: list[Any] | None = None
    pending: list[int] = field(default_factory=list)  # tokens still to feed
    fed: list[int] = field(default_factory=list)      # tokens whose keys/values are cached
    rows: list[np.ndarray] = field(default_factory=list)  # scoring: per-chunk outputs
    uid: int | None = None         # the sequence's id in the batch generator, once decoding
    out_steps: list[tuple] = field(default_factory=list)  # sampled, not yet pushed
    grammar: Any = None            # structured.solver.Row: the output's grammar, or None
    failed: str = ""               # why the sequence fails (its grammar refused), or ""
    n_pushed: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    cached: int = 0


class _Worker:
    """The one thread of the process that makes MLX calls, shared by every MLX engine.

    MLX keeps its streams per thread, and a thread that has computed with MLX must outlive
    the arrays it made: when such a thread ends before the process does, the process aborts at
    exit. So loading and every forward pass run here, on a daemon thread that never ends.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._cores: list[MlxCore] = []
        self._calls: deque[tuple[Any, dict[str, Any], threading.Event]] = deque()
        self._thread: threading.Thread | None = None

    def _ensure_started(self) -> None:  # with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pyengine-mlx", daemon=True)
            self._thread.start()

    def call(self, fn: Any) -> Any:
        """Runs fn() on the worker and returns its result (or raises its exception)."""
        box: dict[str, Any] = {}
        done = threading.Event()
        with self.cond:
            self._ensure_started()
            self._calls.append((fn, box, done))
            self.cond.notify_all()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def add(self, core: "MlxCore") -> None:
        with self.cond:
            self._ensure_started()
            self._cores.append(core)
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._calls and not any(c._has_work() for c in self._cores):
                    self.cond.wait()
                calls, self._calls = list(self._calls), deque()
                cores = [c for c in self._cores if c._has_work()]
            for fn, box, done in calls:
                try:
                    box["value"] = fn()
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                    box["error"] = e
                done.set()
            for core in cores:
                if not core._round():
                    with self.cond:
                        self._cores.remove(core)


    def shutdown(self) -> None:
        """At interpreter exit: closes the engines still open, so the worker drops their
        arrays and finishes MLX's work before MLX's own state is torn down (otherwise the
        process can abort at exit, one time in a few)."""
        with self.cond:
            cores = list(self._cores)
            started = self._thread is not None
        for core in cores:
            core.close()
        if started:
            self.call(mx.synchronize)


_WORKER = _Worker()
atexit.register(_WORKER.shutdown)


class MlxCore:
    """A Gemma GGUF (or a converted MLX folder) served by mlx-lm behind the native surface."""

    def __init__(self, path: str | Path, n_ctx: int = 4096, max_batch: int = 16,
                 max_batch_tokens: int = 512, kv_cache_bytes: int = 2048 << 20,
                 prefix_cache: bool = True, dtype: str | None = None) -> None:
        self.file, self.model, self.dtype = _WORKER.call(lambda: load.load(Path(path), dtype))
        self._final_norm = _WORKER.call(lambda: convert.capture_final_norm(self.model))
        # mlx-lm's continuous batching: every generating sequence decodes in one forward pass.
        self._batch = _WORKER.call(lambda: BatchGenerator(
            self.model, max_tokens=1 << 30, completion_batch_size=max_batch,
            prefill_batch_size=max_batch, prefill_step_size=max_batch_tokens))
        self.config = dict(self.file.config, backend="mlx", mlx_dtype=self.dtype)
        self.n_vocab = self.file.n_vocab
        self.n_ctx = min(n_ctx, self.config["n_ctx_train"]) if n_ctx > 0 \
            else self.config["n_ctx_train"]
        self.n_threads = 1
        self._max_batch = max_batch
        self._chunk = max_batch_tokens
        self._prompt_cache = LRUPromptCache(max_size=64, max_bytes=kv_cache_bytes) \
            if prefix_cache else None
        self._lock = _WORKER.cond  # guards the queues below; the worker waits on it
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._closed = False
        self._released = threading.Event()
        self._ids = itertools.count(1)
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._stats["max_step_sequences"] = self._stats["last_step_sequences"] = 0
        self._ready_ids: set[int] = set()
        self._ready_cond = threading.Condition()
        _WORKER.add(self)

    # ------------------------------------------------------------------ the native surface
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.file.tokenize(text, add_bos, special)

    def detokenize(self, ids: list[int], special: bool = False) -> str:
        return self.file.detokenize(ids, special)

    @property
    def bos_id(self) -> int:
        return self.file.bos_id

    @property
    def eos_id(self) -> int:
        return self.file.eos_id

    @property
    def eog_ids(self) -> list[int]:
        return self.file.eog_ids

    def token_pieces(self) -> list[tuple[bytes, bool]]:
        return self.file.token_pieces()

    def submit(self, prompt: list[int], options: Any, n_ctx: int = 0,
               notify: bool = False, constraint: Any = None) -> MlxRequest:
        n_ctx = min(n_ctx, self.config["n_ctx_train"]) if n_ctx > 0 else self.n_ctx
        prompt = self._check_ids(prompt, n_ctx)
        gen = self.file.generation(prompt, options, n_ctx)
        return self._enqueue(_Seq(MlxRequest(next(self._ids), self, notify), "generate",
                                  prompt, gen=gen,
                                  grammar=None if constraint is None else constraint.matcher))

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._score("logits", ids)

    def embed(self, ids: list[int]) -> np.ndarray:
        return self._score("embed", ids)

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._stats, running=len(self._running), waiting=len(self._waiting))
        pc = self._prompt_cache
        # The native keys, so the server's metrics read either backend; MLX has no pages.
        out.update(kv_pages_total=0, kv_pages_free=0, kv_pages_cached=0, kv_pages_used=0,
                   kv_page_bytes=0, kv_block_tokens=0,
                   kv_blocks_cached=len(pc) if pc is not None else 0,
                   kv_cached_bytes=pc.nbytes if pc is not None else 0)
        return out

    def wait_ready(self, timeout_ms: int) -> list[int]:
        with self._ready_cond:
            if not self._ready_ids:
                self._ready_cond.wait(timeout_ms / 1000)
            ids, self._ready_ids = list(self._ready_ids), set()
        return ids

    def close(self) -> None:
        """Ends the requests in flight with an error and lets the worker drop the model."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._released.wait()

    # ---------------------------------------------------------------------------- internals
    def _check_ids(self, ids: Any, n_ctx: int) -> list[int]:
        return self.file.check_ids(ids, n_ctx)  # the native engine's checks and messages

    def _enqueue(self, seq: _Seq) -> MlxRequest:
        with self._lock:
            if self._closed:
                raise PyEngineError("the engine is closed")
            self._waiting.append(seq)
            self._lock.notify_all()
        return seq.req

    def _score(self, kind: str, ids: list[int]) -> np.ndarray:
        ids = self._check_ids(ids, self.n_ctx)
        req = self._enqueue(_Seq(MlxRequest(next(self._ids), self, False), kind, ids))
        while not req.finished:
            req.next()
        req.poll()  # raises the request's error, if any
        assert req.result is not None
        return req.result

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _ready(self, rid: int) -> None:
        with self._ready_cond:
            self._ready_ids.add(rid)
            self._ready_cond.notify_all()

    def _has_work(self) -> bool:  # called with the lock held
        return self._closed or bool(self._waiting or self._running)

    def _round(self) -> bool:
        """One scheduling round on the worker thread; False once the engine is closed.

        Cancellations first, then one prompt chunk for every sequence still reading its
        prompt (or a scoring request), then one batched decode step of every generating one.
        """
        with self._lock:
            if self._closed:
                left, self._running, self._waiting = (self._running + list(self._waiting), [],
                                                      deque())
                in_batch = [seq.uid for seq in left if seq.uid is not None]
                if in_batch:
                    self._batch.remove(in_batch)
                for seq in left:
                    seq.req._fail("the engine is closed")
                self._batch.close()
                self._batch = self._prompt_cache = self.model = None
                self._released.set()
                return False
            while self._waiting and len(self._running) < self._max_batch:
                self._running.append(self._waiting.popleft())
            running = list(self._running)
        ended = []
        for seq in running:
            try:
                if seq.req.cancelled:
                    self._cancel(seq)
                    ended.append(seq)
                elif seq.uid is None and self._prefill(seq):
                    ended.append(seq)
            except Exception as e:  # noqa: BLE001 - the request carries it to its caller
                self._fail(seq, e)
                ended.append(seq)
        decoding = [seq for seq in running if seq.uid is not None and seq not in ended]
        if decoding:
            t0 = time.perf_counter_ns()
            try:
                self._batch.next()
            except Exception as e:  # noqa: BLE001
                for seq in decoding:
                    self._fail(seq, e)
                ended += decoding
            else:
                dt = time.perf_counter_ns() - t0
                self._stats["decode_steps"] += 1
                for seq in decoding:
                    if self._deliver(seq, dt):
                        ended.append(seq)
        with self._lock:
            self._stats["steps"] += 1
            self._stats["step_sequences"] += len(running)
            self._stats["last_step_sequences"] = len(running)
            self._stats["max_step_sequences"] = max(self._stats["max_step_sequences"],
                                                    len(running))
        return True

    def _retire(self, seq: _Seq) -> None:
        """Takes an ending sequence off the running list, before its last step is pushed (a
        caller that sees the end then sees the engine idle)."""
        if seq.uid is not None:
            self._batch.remove([seq.uid])
            seq.uid = None
        with self._lock:
            if seq in self._running:
                self._running.remove(seq)

    def _fail(self, seq: _Seq, e: Exception) -> None:
        self._retire(seq)
        self._stats["failed"] += 1
        seq.req._fail(f"MLX backend: {type(e).__name__}: {e}")

    def _cancel(self, seq: _Seq) -> None:
        self._retire(seq)
        if seq.gen is not None:
            seq.req._push(seq.gen.finish("cancel", False))
        else:
            seq.req._fail("cancelled")
        self._stats["cancelled"] += 1

    def _start(self, seq: _Seq) -> None:
        """Gives a new sequence its KV cache, from the prefix cache when one matches."""
        seq.pending = list(seq.prompt)
        seq.cache = None
        if seq.kind == "generate" and self._prompt_cache is not None:
            self._stats["prefix_query_tokens"] += len(seq.prompt)
            cache, rest = self._prompt_cache.fetch_nearest_cache("model", seq.prompt)
            if cache is not None and not rest:  # all cached: the last position is recomputed
                if can_trim_prompt_cache(cache):
                    trim_prompt_cache(cache, 1)
                    rest = seq.prompt[-1:]
                else:
                    cache = None
            if cache is not None:
                seq.cache, seq.pending = cache, list(rest)
                seq.cached = len(seq.prompt) - len(rest)
                seq.fed = seq.prompt[: seq.cached]
                self._stats["prefix_hit_tokens"] += seq.cached
        if seq.cache is None:
            seq.cache = self.model.make_cache()

    def _checkpoint_at(self, seq: _Seq) -> int:
        """Where a prompt's cache is also kept for reuse: the last 16-token boundary before its
        final token (0: none). Later prompts sharing that much start from it, even when the
        model's sliding-window caches cannot be trimmed back from a longer entry."""
        if seq.kind != "generate" or self._prompt_cache is None:
            return 0
        at = (len(seq.prompt) - 1) // CHECKPOINT_TOKENS * CHECKPOINT_TOKENS
        return at if at > seq.cached else 0

    def _prefill(self, seq: _Seq) -> bool:
        """One prompt chunk of a sequence; True when the request has ended (scoring).

        A generation reads all but its last prompt token here; the last one enters the batch
        generator, whose first step yields the first output token.
        """
        if seq.cache is None:
            self._start(seq)
        t0 = time.perf_counter_ns()
        todo = seq.pending[:-1] if seq.kind == "generate" else seq.pending
        if todo:
            n = self._chunk
            checkpoint = self._checkpoint_at(seq)
            if checkpoint > len(seq.fed):
                n = min(n, checkpoint - len(seq.fed))
            chunk, seq.pending = todo[:n], seq.pending[min(n, len(todo)):]
            out = self.model(mx.array(chunk, dtype=mx.int32)[None], cache=seq.cache)
            seq.fed += chunk
            if seq.kind == "logits":
                seq.rows.append(np.array(out[0].astype(mx.float32)))
            elif seq.kind == "embed":
                hidden = self._final_norm.last
                seq.rows.append(np.array(hidden[0].astype(mx.float32).sum(axis=0)))
            mx.eval(seq.cache)  # keeps the lazy graph from growing across turns
            if len(seq.fed) == checkpoint:
                self._prompt_cache.insert_cache("model", list(seq.fed), _snapshot(seq.cache),
                                                cache_type="user")
            seq.prompt_ns += time.perf_counter_ns() - t0
            with self._lock:
                self._stats["step_tokens"] += len(chunk)
                self._stats["prompt_tokens"] += len(chunk)
        if seq.kind != "generate":
            if seq.pending:
                return False
            if seq.kind == "logits":
                seq.req.result = np.concatenate(seq.rows, axis=0)
            else:
                seq.req.result = (np.sum(seq.rows, axis=0) / len(seq.prompt)).astype(np.float32)
            self._stats["finished"] += 1
            self._retire(seq)
            seq.req._push((-1, "", True, "stop"))
            return True
        if len(seq.pending) == 1:  # the prompt's last token: hand over to the batch
            (seq.uid,) = self._batch.insert([seq.pending], caches=[seq.cache],
                                            logits_processors=[[self._sampler(seq)]],
                                            max_tokens=[1 << 30])
            seq.cache = None  # the batch generator owns it now
        return False

    @staticmethod
    def _sampler(seq: _Seq) -> Any:
        """The sequence's logits processor in the batch generator: it samples with the native
        Generation (penalties see the raw logits) and leaves only the chosen token possible,
        so the generator's greedy pick is that token."""
        def pick(_context: Any, logits: mx.array) -> mx.array:
            if seq.gen.done:  # ended in this very step; removed right after it
                return logits
            row = np.array(logits[0].astype(mx.float32))
            if seq.grammar is not None and not _mask(seq.grammar, row):
                seq.failed = "the output's grammar allows no token here"
                return logits
            step = seq.gen.accept(row)
            if seq.grammar is not None and step[0] >= 0:
                error = seq.grammar.grammars.advance([seq.grammar], [step[0]])[0]
                if error:
                    seq.failed = f"the output's grammar: {error}"
            seq.out_steps.append(step)
            token = step[0] if step[0] >= 0 else 0
            only = mx.arange(logits.shape[-1]) == token
            return mx.where(only, 0.0, -mx.inf)[None].astype(logits.dtype)
        return pick

    def _deliver(self, seq: _Seq, dt: int) -> bool:
        """Pushes what a decode step sampled for a sequence; True when it has ended."""
        if seq.failed:
            self._retire(seq)
            self._stats["failed"] += 1
            seq.req._fail(seq.failed)
            return True
        steps, seq.out_steps = seq.out_steps, []
        for step in steps:
            if seq.n_pushed == 0:
                seq.prompt_ns += dt  # the step that read the last prompt token
                self._stats["prompt_tokens"] += 1
            else:
                seq.eval_ns += dt
                self._stats["decode_tokens"] += 1
            self._stats["step_tokens"] += 1
            seq.n_pushed += 1
            counts = {"prompt_tokens": len(seq.prompt),
                      "prompt_eval_count": len(seq.prompt) - seq.cached,
                      "cached_tokens": seq.cached, "eval_count": seq.gen.n_output,
                      "prompt_eval_duration": seq.prompt_ns, "eval_duration": seq.eval_ns}
            if step[2]:  # the last step: the sequence leaves first
                caches = self._batch.remove([seq.uid], return_prompt_caches=True)
                seq.uid = None
                if self._prompt_cache is not None and caches:
                    cache, tokens = next(iter(caches.values()))
                    self._prompt_cache.insert_cache("model", list(tokens), cache)
                self._stats["finished"] += 1
                self._retire(seq)
            seq.req._push(step, counts)
        return seq.gen.done


def _mask(row: Any, logits: np.ndarray) -> bool:
    """Masks logits [n_vocab] in place with the grammar row's allowed tokens (the solver's
    own mask, one row at a time: MLX samples each row in its own logits processor); False
    when it allows none."""
    words = (logits.shape[0] + 31) // 32
    bits = np.zeros((1, words), dtype=np.uint32)
    row.grammars.fill_masks([row], bits.ctypes.data, words)
    allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[: logits.shape[0]].astype(bool)
    logits[~allowed] = -np.inf
    return bool(allowed.any())
