"""The pool of loaded models: one policy for the server and for the fallback chain's native step.

Model names come from a fixed mapping (a server's ``NAME=PATH`` models), from a ``resolver``
(the gateway's model store: a name in, a GGUF path out), or both (the mapping first). A request
holds a model through a ``Lease`` (loading it if needed) and releases it when its response is
finished. Loads run one at a time: before one, idle models are unloaded, least recently used
first, until fewer than ``max_loaded`` remain (with every loaded model busy, the load waits for
a release); then the memory check refuses the load when the file's weights exceed the memory
available now (``ModelUnavailable``, this time only: a later request tries again). A file the
engine cannot run (``PyEngineError`` at load, or a reason ``check`` found at start) is marked
unavailable: reported once, never loaded again. Once nobody holds a model it stays loaded for
its ``keep_alive`` seconds (a timer thread unloads it; 0 unloads at once, ``math.inf`` keeps it
until it is evicted, unloaded or the pool closes).

The core is thread-safe and synchronous (``lease``, ``unload``, ``close``), as the fallback
chain calls it from worker threads; the server's event loop uses ``acquire``, ``aunload`` and
``aclose``, which never block the loop (a lease that must load or wait does so in a thread of
its own, so waiters cannot starve the loop's executor of the threads running requests).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyengine.errors import PyEngineError

if TYPE_CHECKING:  # the engine's module imports the gateway, whose native step is a pool
    from pyengine.engine import Engine

log = logging.getLogger("pyengine.pool")

DEFAULT_MAX_LOADED = 3  # Ollama's default for CPU inference


def canonical_name(name: str) -> str:
    """``gemma`` -> ``gemma:latest``: Ollama's default tag, added when a name has none."""
    name = name.strip()
    base = name.rsplit("/", 1)[-1]
    return name if ":" in base else f"{name}:latest"


def _key(name: str) -> str:
    # Ollama matches model names case-insensitively.
    return canonical_name(name).lower()


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


class ModelNotFound(LookupError):
    """No model of that name is here; ``detail`` says what the resolver found, if it was asked."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f'model "{name}" not found, try pulling it first')
        self.name = name
        self.detail = detail


class ModelUnavailable(RuntimeError):
    """A model here that this engine cannot run: for good (``lasting``: its file), or this time
    (the memory check)."""

    def __init__(self, name: str, reason: str, lasting: bool = True) -> None:
        super().__init__(f"model {name!r} cannot run on this server: {reason}")
        self.name = name
        self.reason = reason
        self.lasting = lasting


@dataclass(frozen=True)
class ModelEntry:
    """A model: its display name (``name:tag`` for a mapping's models) and its GGUF file."""

    name: str
    path: Path

    @property
    def key(self) -> str:
        return _key(self.name)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(eq=False)
class LoadedModel:
    """A model in memory and the requests using it. It unloads ``keep_alive`` seconds after
    ``touched_at`` (its last hold or release) once ``refs`` is 0."""

    entry: ModelEntry
    engine: Engine
    keep_alive: float
    touched_at: datetime = field(default_factory=_now)
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    timer: threading.Timer | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Lease:
    """One request's hold on a loaded model; ``release`` (idempotent) when the response ends."""

    def __init__(self, pool: ModelPool, loaded: LoadedModel, load_duration: int) -> None:
        self._pool = pool
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
            self._pool._release(self.model)

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


class ModelPool:
    """GGUF models loaded on first use, at most ``max_loaded`` at a time (see the module).

    ``models``: name -> GGUF path (checked now); ``resolver``: name -> GGUF path for names not
    in ``models`` (``LookupError``, ``OSError`` or ``ValueError`` for a name it does not have).
    ``engine_options`` are passed to every engine (``n_threads``, ``n_ctx``, ``kv_cache_mb``,
    ``config``, ...); ``keep_alive`` is the default number of seconds an idle model stays
    loaded. ``engine_factory`` builds engines (default ``Engine``; tests may count loads).
    """

    def __init__(self, models: Mapping[str, str | os.PathLike[str]] | None = None, *,
                 resolver: Callable[[str], str | os.PathLike[str]] | None = None,
                 max_loaded: int = DEFAULT_MAX_LOADED, keep_alive: float = math.inf,
                 engine_options: Mapping[str, Any] | None = None,
                 engine_factory: Callable[..., Engine] | None = None) -> None:
        if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
            raise ValueError(f"max_loaded must be a positive integer, got {max_loaded!r}")
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.engine_options = dict(engine_options or {})
        self._factory = engine_factory
        self._resolver = resolver
        self._entries: dict[str, ModelEntry] = {}
        for name, path in (models or {}).items():
            entry = ModelEntry(canonical_name(name), Path(path).expanduser())
            if not name.strip() or any(c.isspace() for c in name.strip()):
                raise ValueError(f"invalid model name {name!r}")
            if entry.key in self._entries:
                raise ValueError(f"model name {entry.name!r} is given twice")
            if not entry.path.is_file():
                raise FileNotFoundError(f"model not found: {path} (expected a GGUF file path)")
            self._entries[entry.key] = entry
        self._unavailable: dict[str, tuple[str, str]] = {}  # key -> (name, why it cannot run)
        self._loaded: dict[str, LoadedModel] = {}
        self._cond = threading.Condition()  # guards the two dicts above and every LoadedModel
        self._load_lock = threading.Lock()  # one load at a time: memory is checked one by one

    # -- lookup ---------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelEntry:
        """The entry serving ``name`` (``name`` or ``name:tag``); raises ``ModelNotFound``."""
        if not isinstance(name, str) or not name.strip():
            raise ModelNotFound(name if isinstance(name, str) else str(name))
        entry = self._entries.get(_key(name))
        if entry is not None:
            return entry
        if self._resolver is None:
            raise ModelNotFound(name)
        try:
            path = Path(self._resolver(name))
        except (LookupError, OSError, ValueError) as e:  # missing, or a name it refuses
            raise ModelNotFound(name, str(e)) from None
        return ModelEntry(name.strip(), path)

    def entries(self) -> list[ModelEntry]:
        """Every model of the mapping, in the order given (the resolver's are not listed)."""
        return list(self._entries.values())

    def unavailable(self, name: str) -> str | None:
        """Why model ``name`` cannot run here (found by ``check`` or a failed load), or None."""
        found = self._unavailable.get(_key(name))
        return found[1] if found else None

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Records that ``name`` cannot run here: reported once, never loaded again."""
        with self._cond:
            key = _key(name)
            if key in self._unavailable:
                return
            entry = self._entries.get(key)
            shown = entry.name if entry is not None else name.strip()
            self._unavailable[key] = (shown, reason)
        log.error("model %s cannot run on this server: %s (its requests go to the fallback "
                  "chain)", shown, reason)

    def check(self, reason_of: Callable[[Path], str | None]) -> None:
        """Marks every model of the mapping ``reason_of(path)`` finds a reason against."""
        for entry in self._entries.values():
            reason = reason_of(entry.path)
            if reason is not None:
                self.mark_unavailable(entry.name, reason)

    def loaded(self) -> list[LoadedModel]:
        """The models in memory now."""
        with self._cond:
            return list(self._loaded.values())

    def get_loaded(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name``, if it is loaded."""
        with self._cond:
            return self._loaded.get(_key(name))

    # -- use (any thread) -----------------------------------------------------------------

    def lease(self, name: str, keep_alive: float | None = None,
              wait_s: float | None = None) -> Lease:
        """Holds model ``name`` (loading it first if needed) for one request; blocks while it
        loads or waits for room. ``keep_alive`` (seconds; default the pool's) applies once the
        request is released. Raises ``ModelNotFound``, ``ModelUnavailable`` (marked, or the
        memory check this time), ``TimeoutError`` when ``wait_s`` passes before the model is
        held, and what loading raises otherwise (``OSError``, ``ValueError``).
        """
        t0 = time.perf_counter_ns()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        held = self._take(self._key_of(name), keep_alive, t0)
        if held is not None:
            return held
        entry = self.resolve(name)
        if not self._load_lock.acquire(timeout=-1 if deadline is None else _left(deadline)):
            raise TimeoutError(f"model {entry.name!r}: another load took longer than "
                               f"{wait_s:g} s")
        try:
            held = self._take(entry.key, keep_alive, t0)
            if held is not None:
                return held
            loaded = self._load(entry, deadline)
            with self._cond:
                self._loaded[entry.key] = loaded
                self._hold(loaded, keep_alive)
        finally:
            self._load_lock.release()
        return Lease(self, loaded, time.perf_counter_ns() - t0)

    def unload(self, name: str) -> None:
        """Unloads ``name`` now, or as soon as its last request ends."""
        with self._cond:
            loaded = self._loaded.get(self._key_of(name))
            if loaded is None:
                return
            loaded.keep_alive = 0.0
            loaded.touched_at = _now()
            if loaded.refs > 0:
                return
            self._drop(loaded)
        self._close(loaded)

    def close(self) -> None:
        """Unloads every model (shutdown); requests still running end with an error."""
        with self._cond:
            gone = list(self._loaded.values())
            for loaded in gone:
                self._drop(loaded)
        for loaded in gone:
            self._close(loaded)

    # -- use (the event loop) -------------------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """``lease`` for a coroutine: at once when the model is loaded, else in a thread."""
        held = self._take(self._key_of(name), keep_alive, time.perf_counter_ns())
        if held is not None:
            return held
        return await _in_own_thread(self.lease, name, keep_alive)

    async def aunload(self, name: str) -> None:
        """``unload`` for a coroutine (the engine closes in a worker thread)."""
        await asyncio.to_thread(self.unload, name)

    async def aclose(self) -> None:
        """``close`` for a coroutine (the engines close in a worker thread)."""
        await asyncio.to_thread(self.close)

    # -- internals ------------------------------------------------------------------------

    def _key_of(self, name: str) -> str:
        # Without a resolver, an unknown name is refused before anything else.
        if self._resolver is None or not isinstance(name, str) or not name.strip():
            return self.resolve(name).key
        return _key(name)

    def _take(self, key: str, keep_alive: float | None, t0: int) -> Lease | None:
        """A lease on the model if it is loaded (None if not); raises for a marked model."""
        with self._cond:
            if key in self._unavailable:
                raise ModelUnavailable(*self._unavailable[key])
            loaded = self._loaded.get(key)
            if loaded is None:
                return None
            self._hold(loaded, keep_alive)
        return Lease(self, loaded, time.perf_counter_ns() - t0)

    def _hold(self, loaded: LoadedModel, keep_alive: float | None) -> None:
        # Under the condition's lock.
        loaded.refs += 1
        loaded.cancel_timer()
        loaded.keep_alive = self.keep_alive if keep_alive is None else keep_alive
        loaded.touched_at = _now()
        loaded.last_used = time.monotonic()

    def _load(self, entry: ModelEntry, deadline: float | None) -> LoadedModel:
        # Under the load lock.
        self._make_room(entry, deadline)
        # After making room, so the memory idle models held counts as available.
        need = entry.path.stat().st_size
        free = available_memory()
        if free is not None and need > free:  # this time: memory may be free on a later request
            raise ModelUnavailable(entry.name, f"not enough memory: its weights take "
                                               f"{need >> 20} MiB, {free >> 20} MiB available",
                                   lasting=False)
        factory = self._factory
        if factory is None:
            from pyengine.engine import Engine

            factory = Engine
        try:
            engine = factory(entry.path, **self.engine_options)
        except PyEngineError as e:  # the file itself: unsupported, malformed; never retried
            self.mark_unavailable(entry.name, str(e))
            raise ModelUnavailable(entry.name, str(e)) from e
        return LoadedModel(entry, engine, keep_alive=self.keep_alive)

    def _make_room(self, entry: ModelEntry, deadline: float | None) -> None:
        # Evicts idle models, least recently used first, and waits for a request to end when
        # every loaded model is busy.
        while True:
            with self._cond:
                if len(self._loaded) < self.max_loaded:
                    return
                idle = [m for m in self._loaded.values() if m.refs == 0]
                if not idle:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"model {entry.name!r}: every loaded model stayed "
                                           "busy")
                    self._cond.wait(None if deadline is None else _left(deadline))
                    continue
                victim = min(idle, key=lambda m: m.last_used)
                self._drop(victim)
            self._close(victim)

    def _release(self, loaded: LoadedModel) -> None:
        with self._cond:
            loaded.refs -= 1
            loaded.last_used = time.monotonic()
            loaded.touched_at = _now()
            self._cond.notify_all()
            # A wait longer than threads can time is for ever (math.inf among them).
            if loaded.refs > 0 or loaded.keep_alive >= threading.TIMEOUT_MAX or \
                    self._loaded.get(loaded.entry.key) is not loaded:
                return
            loaded.cancel_timer()
            timer = threading.Timer(max(loaded.keep_alive, 0.0), self._expire, (loaded,))
            timer.daemon = True
            loaded.timer = timer
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            timer.start()
        else:  # after what the loop is doing: the response's last reading of the engine first
            loop.call_soon(timer.start)

    def _expire(self, loaded: LoadedModel) -> None:
        # A timer's thread. A request may have taken the model again since it was started.
        with self._cond:
            if loaded.timer is None or loaded.timer is not threading.current_thread() or \
                    loaded.refs > 0 or self._loaded.get(loaded.entry.key) is not loaded:
                return
            self._drop(loaded)
        self._close(loaded)

    def _drop(self, loaded: LoadedModel) -> None:
        # Under the condition's lock: out of the pool, closed by the caller after the lock.
        loaded.cancel_timer()
        del self._loaded[loaded.entry.key]

    def _close(self, loaded: LoadedModel) -> None:
        try:
            loaded.engine.close()
        finally:
            with self._cond:
                self._cond.notify_all()  # its memory is free now: a waiting load may go on


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (a ``time.monotonic`` value), 0 once it has passed."""
    return max(deadline - time.monotonic(), 0.0)


async def _in_own_thread(fn: Callable[..., Lease], *args: Any) -> Lease:
    """``fn(*args)`` in a new thread. A lease it returns after the awaiting task was cancelled
    (the client left) is released at once, so it cannot hold its model for ever."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Lease] = loop.create_future()

    def settle(result: Lease | None, error: BaseException | None) -> None:
        if future.cancelled():
            if result is not None:
                result.release()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as e:  # noqa: BLE001 (delivered to the awaiting task)
            error = e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody will use the lease
            if result is not None:
                result.release()

    threading.Thread(target=work, name="pyengine-pool-load", daemon=True).start()
    return await future
