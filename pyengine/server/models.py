"""The models a server offers: names mapped to GGUF files, loaded on demand and unloaded when idle.

A request ``acquire``s a model (loading it if needed, evicting the least recently used idle
model when ``max_loaded`` are already loaded) and releases it when its response is finished.
Once a model has no request left, it stays loaded for the request's ``keep_alive`` seconds,
as Ollama does: 0 unloads it at once, ``FOREVER`` keeps it until it is unloaded explicitly.
Everything here runs on the server's event loop; loading and closing engines run in a worker
thread so they never block it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from pyengine.gateway.providers import available_memory
from pyengine.engine import Engine
from pyengine.errors import PyEngineError
from pyengine.server.errors import log
from pyengine.server.keep_alive import DEFAULT_KEEP_ALIVE, FOREVER
from pyengine.server.timestamps import after

DEFAULT_MAX_LOADED = 3  # Ollama's default for CPU inference


def canonical_name(name: str) -> str:
    """``gemma`` -> ``gemma:latest``: Ollama's default tag, added when a name has none."""
    name = name.strip()
    base = name.rsplit("/", 1)[-1]
    return name if ":" in base else f"{name}:latest"


def _key(name: str) -> str:
    # Ollama matches model names case-insensitively.
    return canonical_name(name).lower()


class ModelNotFound(LookupError):
    """No model of that name is served here."""

    def __init__(self, name: str) -> None:
        super().__init__(f'model "{name}" not found, try pulling it first')
        self.name = name


class ModelUnavailable(RuntimeError):
    """A model served here that this engine cannot run (the reason was reported once)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} cannot run on this server: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ModelEntry:
    """A served model: its display name (``name:tag``) and its GGUF file."""

    name: str
    path: Path

    @property
    def key(self) -> str:
        return _key(self.name)


@dataclass(eq=False)
class LoadedModel:
    """A model in memory and the requests using it."""

    entry: ModelEntry
    engine: Engine
    keep_alive: float
    expires_at: datetime
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Lease:
    """One request's hold on a loaded model; ``release`` (idempotent) when the response ends."""

    def __init__(self, models: "ModelSet", loaded: LoadedModel, load_duration: int) -> None:
        self._models = models
        self.model = loaded
        self.load_duration = load_duration  # ns spent waiting for (and maybe loading) the model
        self._released = False

    @property
    def engine(self) -> Engine:
        return self.model.engine

    def release(self) -> None:
        """Gives the model back; it starts its keep-alive countdown once nobody holds it."""
        if not self._released:
            self._released = True
            self._models._release(self.model)

    def tokenize(self, text: str, add_bos: bool, bad: Callable[[str], Exception]) -> list[int]:
        """``text`` as the leased model's token ids (turn markers parsed). On failure the lease
        is released first; a bad text (ValueError, TypeError) raises ``bad(message)``."""
        try:
            return self.engine.tokenize(text, add_bos=add_bos, special=True)
        except BaseException as e:
            self.release()
            if isinstance(e, (ValueError, TypeError)):
                raise bad(str(e)) from None
            raise


class ModelSet:
    """Named GGUF models, loaded on first use, at most ``max_loaded`` at a time.

    ``engine_options`` are passed to every ``Engine`` (``n_threads``, ``n_ctx``,
    ``kv_cache_mb``, ...); ``keep_alive`` is the default number of seconds an idle model stays
    loaded. ``engine_factory`` builds engines (tests may count loads with it).
    """

    def __init__(self, models: Mapping[str, str | os.PathLike[str]], *,
                 max_loaded: int = DEFAULT_MAX_LOADED,
                 keep_alive: float = DEFAULT_KEEP_ALIVE,
                 engine_options: Mapping[str, Any] | None = None,
                 engine_factory: Callable[..., Engine] = Engine) -> None:
        if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
            raise ValueError(f"max_loaded must be a positive integer, got {max_loaded!r}")
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.engine_options = dict(engine_options or {})
        self._factory = engine_factory
        self._entries: dict[str, ModelEntry] = {}
        for name, path in models.items():
            entry = ModelEntry(canonical_name(name), Path(path).expanduser())
            if not name.strip() or any(c.isspace() for c in name.strip()):
                raise ValueError(f"invalid model name {name!r}")
            if entry.key in self._entries:
                raise ValueError(f"model name {entry.name!r} is given twice")
            if not entry.path.is_file():
                raise FileNotFoundError(f"model not found: {path} (expected a GGUF file path)")
            self._entries[entry.key] = entry
        self._unavailable: dict[str, str] = {}  # key -> why the engine cannot run it
        self._loaded: dict[str, LoadedModel] = {}
        self._load_lock: asyncio.Lock | None = None
        self._released: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # unload tasks, kept alive until done

    # -- lookup ---------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelEntry:
        """The entry serving ``name`` (``name`` or ``name:tag``); raises ``ModelNotFound``."""
        if not isinstance(name, str) or not name.strip():
            raise ModelNotFound(name if isinstance(name, str) else str(name))
        entry = self._entries.get(_key(name))
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def entries(self) -> list[ModelEntry]:
        """Every served model, in the order given."""
        return list(self._entries.values())

    def unavailable(self, name: str) -> str | None:
        """Why model ``name`` cannot run here (found by ``check`` or a failed load), or None."""
        return self._unavailable.get(_key(name))

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Records that ``name`` cannot run here: reported once, never loaded again."""
        key = _key(name)
        if key not in self._unavailable:
            self._unavailable[key] = reason
            log.error("model %s cannot run on this server: %s (its requests go to the fallback "
                      "chain)", self.resolve(name).name, reason)

    def check(self, reason_of: Callable[[Path], str | None]) -> None:
        """Marks every model ``reason_of(path)`` finds a reason against (a server's start)."""
        for entry in self._entries.values():
            reason = reason_of(entry.path)
            if reason is not None:
                self.mark_unavailable(entry.name, reason)

    def loaded(self) -> list[LoadedModel]:
        """The models in memory now."""
        return list(self._loaded.values())

    def get_loaded(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name``, if it is loaded."""
        return self._loaded.get(_key(name))

    # -- use ------------------------------------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Holds model ``name`` (loading it first if needed) for one request.

        ``keep_alive`` (seconds; default the set's) applies once the request is released.
        Load failures propagate (``PyEngineError``, ``FileNotFoundError``).
        """
        entry = self.resolve(name)
        if entry.key in self._unavailable:
            raise ModelUnavailable(entry.name, self._unavailable[entry.key])
        t0 = time.perf_counter_ns()
        loaded = self._loaded.get(entry.key)
        if loaded is None:
            if self._load_lock is None:
                self._load_lock = asyncio.Lock()
            async with self._load_lock:  # one load at a time: memory is checked one by one
                loaded = self._loaded.get(entry.key)
                if loaded is None:
                    loaded = await self._load(entry)
        loaded.refs += 1
        loaded.cancel_timer()
        loaded.keep_alive = self.keep_alive if keep_alive is None else keep_alive
        loaded.expires_at = after(loaded.keep_alive)
        loaded.last_used = time.monotonic()
        return Lease(self, loaded, time.perf_counter_ns() - t0)

    async def load(self, name: str, keep_alive: float | None = None) -> LoadedModel:
        """Loads ``name`` (if needed) and keeps it for ``keep_alive`` seconds."""
        lease = await self.acquire(name, keep_alive)
        lease.release()
        return lease.model

    async def unload(self, name: str) -> None:
        """Unloads ``name`` now, or as soon as its last request ends."""
        entry = self.resolve(name)
        loaded = self._loaded.get(entry.key)
        if loaded is None:
            return
        loaded.keep_alive = 0.0
        loaded.expires_at = after(0.0)
        if loaded.refs == 0:
            await self._unload(loaded)

    async def close(self) -> None:
        """Unloads every model (server shutdown); requests still running end with an error."""
        for task in list(self._tasks):
            task.cancel()
        for loaded in list(self._loaded.values()):
            loaded.cancel_timer()
            self._loaded.pop(loaded.entry.key, None)
            await asyncio.to_thread(loaded.engine.close)

    # -- internals ------------------------------------------------------------------------

    async def _load(self, entry: ModelEntry) -> LoadedModel:
        await self._make_room()
        # After making room, so the memory idle models held counts as available.
        need = entry.path.stat().st_size
        free = available_memory()
        if free is not None and need > free:  # this time: memory may be free on a later request
            raise ModelUnavailable(entry.name, f"not enough memory: its weights take "
                                               f"{need >> 20} MiB, {free >> 20} MiB available")
        try:
            engine = await asyncio.to_thread(self._factory, entry.path, **self.engine_options)
        except PyEngineError as e:  # the file itself: unsupported, malformed; never retried
            self.mark_unavailable(entry.name, str(e))
            raise
        loaded = LoadedModel(entry, engine, keep_alive=self.keep_alive,
                             expires_at=after(self.keep_alive))
        self._loaded[entry.key] = loaded
        return loaded

    async def _make_room(self) -> None:
        # Called under the load lock: evict idle models, least recently used first, and wait
        # for a request to end when every loaded model is busy.
        while len(self._loaded) >= self.max_loaded:
            idle = [m for m in self._loaded.values() if m.refs == 0]
            if idle:
                await self._unload(min(idle, key=lambda m: m.last_used))
                continue
            if self._released is None:
                self._released = asyncio.Event()
            self._released.clear()
            await self._released.wait()

    def _release(self, loaded: LoadedModel) -> None:
        loaded.refs -= 1
        loaded.last_used = time.monotonic()
        loaded.expires_at = after(loaded.keep_alive)
        if self._released is not None:
            self._released.set()
        if loaded.refs > 0 or loaded.keep_alive == FOREVER:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # released outside the server's loop: no timer, stays loaded
            return
        loaded.cancel_timer()
        if loaded.keep_alive <= 0:
            self._spawn(loop, loaded)
        else:
            loaded.timer = loop.call_later(loaded.keep_alive, self._spawn, loop, loaded)

    def _spawn(self, loop: asyncio.AbstractEventLoop, loaded: LoadedModel) -> None:
        task = loop.create_task(self._unload(loaded))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload(self, loaded: LoadedModel) -> None:
        # A request may have taken the model again since the unload was scheduled.
        if loaded.refs > 0 or self._loaded.get(loaded.entry.key) is not loaded:
            return
        loaded.cancel_timer()
        del self._loaded[loaded.entry.key]
        await asyncio.to_thread(loaded.engine.close)
        if self._released is not None:
            self._released.set()
