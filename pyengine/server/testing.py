"""Running a server for tests and tools: in a thread of this process, or as a subprocess.

Subprocess (a second process playing the Ollama server)::

    with ServerProcess({"tiny": path}, args=["--ctx", "512"]) as server:
        ollama.Client(host=server.url).generate(model="tiny", prompt="hi")

It runs ``python -m pyengine serve --host 127.0.0.1 --port PORT NAME=PATH ...`` on a free port
and returns once ``GET /`` answers 200 (``wait_until_up``). In-process::

    with ServerThread(create_app({"tiny": path})) as server: ...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0,
                  proc: subprocess.Popen[Any] | None = None) -> None:
    """Polls ``GET url/`` until it answers 200; ``TimeoutError`` after ``timeout`` seconds.

    With ``proc``, a process that exits first raises ``RuntimeError`` at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no server answered at {url} within {timeout:.0f} s")
        time.sleep(0.05)


class ServerProcess:
    """``python -m pyengine serve`` in a subprocess on a free port (a context manager).

    ``models``: name -> GGUF path; ``args``: more ``serve`` flags (``--ctx``, ...); ``env``:
    replaces the environment; ``cwd``: where it runs (default: the temporary directory). ``url``
    is the base URL (``http://127.0.0.1:PORT``); ``output()`` returns what it printed so far.
    """

    def __init__(self, models: Mapping[str, str | os.PathLike[str]], *, port: int | None = None,
                 host: str = HOST, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, timeout: float = 120.0) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        self.url = f"http://{host}:{self.port}"
        self.command = [sys.executable, "-m", "pyengine", "serve", "--host", host,
                        "--port", str(self.port), *args,
                        *(f"{name}={Path(path).resolve()}" for name, path in models.items())]
        # Outside a source checkout, where "python -m pyengine" would find the uncompiled
        # package instead of the installed one.
        self._cwd = tempfile.gettempdir() if cwd is None else cwd
        self._env = dict(os.environ if env is None else env)
        self._timeout = timeout
        self._log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServerProcess":
        """Starts the server and waits until it answers."""
        # Output goes to a file, not a pipe nobody reads, so the server never blocks on it.
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self._env, cwd=self._cwd)
        try:
            wait_until_up(self.url, self._timeout, self.proc)
        except BaseException as e:
            self.stop()
            raise RuntimeError(f"{e}; its output:\n{self.output()}") from e
        return self

    def output(self) -> str:
        """Everything the server has printed."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._log.close()


class ServerThread:
    """An ASGI ``app`` served by uvicorn in a background thread (a context manager)."""

    def __init__(self, app: Any, *, host: str = HOST, port: int | None = None,
                 timeout: float = 60.0) -> None:
        import uvicorn

        self.app = app
        self.port = free_port(host) if port is None else port
        self.url = f"http://{host}:{self.port}"
        from pyengine.server.serve import HTTP_IMPL

        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                http=HTTP_IMPL, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="pyengine-server",
                                        daemon=True)
        self._timeout = timeout

    def start(self) -> "ServerThread":
        """Starts serving and waits until the server answers."""
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started serving")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shuts down (closing the app's engines) and joins the thread."""
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
