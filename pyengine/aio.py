"""Waking asyncio tasks when the native scheduler produces their steps.

The scheduler runs in its own native thread and never touches Python. Each engine that serves
asyncio callers gets one helper thread that blocks in ``wait_ready`` (GIL released) and, for
each request with new steps, sets the asyncio event of the task awaiting it through that task's
event loop. No thread per request and no polling interval on the hot path; the thread runs
only while some task is waiting.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ReadyPump:
    """Routes the core's ready notifications to asyncio events (one thread per engine)."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def register(self, request_id: int, event: asyncio.Event) -> None:
        """``event`` is set (on the running loop) whenever request ``request_id`` has steps."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiters[request_id] = (loop, event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pyengine-ready",
                                                daemon=True)
                self._thread.start()

    def unregister(self, request_id: int) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def close(self) -> None:
        """Stops the thread (the core's wait returns within its timeout)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                # Nobody waiting: the thread ends (and stops referencing the engine, which may
                # then be collected); the next registration starts a new one.
                if self._closed or not self._waiters:
                    self._thread = None
                    return
            for request_id in self._core.wait_ready(100):
                with self._lock:
                    waiter = self._waiters.get(request_id)
                if waiter is None:
                    continue
                loop, event = waiter
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # the loop was closed under a forgotten stream
                    self.unregister(request_id)
