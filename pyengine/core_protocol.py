"""What a backend core provides to ``Engine``: the contract the native core (``_core.Engine``)
and the MLX core (``mlx_backend.core.MlxCore``) both meet, so the Python layer above them is
written once. Requests are ``submit``ted with the core's ``GenerateOptions``
(``pyengine.options.GenerateOptions.native()``) and answer ``CoreRequest``'s methods."""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np


class EngineStats(TypedDict):
    """``stats()`` of every core (a core may add keys of its own; MLX has no KV pages and
    answers 0 for them). Counters run from the core's start."""

    running: int                # sequences being computed now
    waiting: int                # sequences queued, not yet admitted (or set back)
    steps: int                  # forward passes
    step_tokens: int            # tokens over all steps
    step_sequences: int         # sequences over all steps (mean batch = / steps)
    max_step_sequences: int
    last_step_sequences: int
    prompt_tokens: int          # prompt positions computed (cache hits are not)
    decode_tokens: int          # generated tokens fed back through the model
    preemptions: int
    finished: int
    cancelled: int
    failed: int
    kv_pages_total: int
    kv_pages_free: int
    kv_pages_cached: int
    kv_pages_used: int
    kv_page_bytes: int
    kv_block_tokens: int
    kv_blocks_cached: int       # blocks the prefix cache holds
    kv_evictions: int
    prefix_query_tokens: int    # prompt positions looked up in the prefix cache
    prefix_hit_tokens: int      # of those, positions shared instead of computed


@runtime_checkable
class CoreRequest(Protocol):
    """One queued generation: its steps, its counts, and cancellation."""

    @property
    def id(self) -> int: ...
    @property
    def finished(self) -> bool: ...
    @property
    def counts(self) -> Any: ...

    def next(self, timeout_ms: int = -1) -> Any: ...
    def poll(self) -> list: ...
    def cancel(self) -> None: ...


@runtime_checkable
class BackendCore(Protocol):
    """A loaded model that tokenizes, scores, embeds and batches generations."""

    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...

    def stats(self) -> EngineStats: ...
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]: ...
    def detokenize(self, ids: list[int], special: bool = False) -> str: ...
    def logits(self, ids: list[int]) -> np.ndarray: ...
    def embed(self, ids: list[int]) -> np.ndarray: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def eog_ids(self) -> list[int]: ...
    def token_pieces(self) -> list[tuple[bytes, bool]]: ...
    def submit(self, prompt: list[int], options: Any, n_ctx: int = 0,
               notify: bool = False, constraint: Any = None) -> CoreRequest: ...
    def wait_ready(self, timeout_ms: int) -> list[int]: ...
    def close(self) -> None: ...
