"""Running the server: listening address, model arguments and uvicorn."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULT_HOST = "127.0.0.1"  # never all interfaces unless asked
DEFAULT_PORT = 11435  # next to Ollama's 11434, so both can run side by side
HOST_ENV = "PYENGINE_HOST"


def parse_host(value: str | None) -> tuple[str, int]:
    """``host:port``, ``http://host:port``, ``:port``, ``host`` or ``[v6]:port`` -> (host, port).

    The syntax of ``OLLAMA_HOST``; a missing host is 127.0.0.1 and a missing port 11435.
    Raises ``ValueError`` for other schemes and bad ports.
    """
    s = (value or "").strip()
    if "://" in s:
        scheme, s = s.split("://", 1)
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"unsupported scheme in host {value!r}")
    s = s.split("/", 1)[0]
    host, port_text = s, ""
    if s.startswith("["):  # [v6] or [v6]:port
        end = s.find("]")
        if end < 0:
            raise ValueError(f"bad host {value!r}")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad host {value!r}")
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif s.count(":") > 1:  # a bare IPv6 address
        ipaddress.IPv6Address(s)
    host = host or DEFAULT_HOST
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"bad port in host {value!r}")
    return host, int(port_text)


def resolve_address(host: str | None = None, port: int | None = None,
                    env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Flags win over ``PYENGINE_HOST``, which wins over 127.0.0.1:11435."""
    env_host, env_port = parse_host((os.environ if env is None else env).get(HOST_ENV))
    port = env_port if port is None else port
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    return host or env_host, port


def _looks_like_path(text: str) -> bool:
    # "library/gemma3:1b" is a store name, "./m.gguf" or "/models/x" a path.
    return (text.startswith(("/", "~", "./", "../", os.sep)) or text.endswith(".gguf")
            or Path(text).expanduser().is_file())


def parse_model_args(args: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH``, ``NAME=STORE_NAME``, a plain ``PATH`` (named by its file stem) or a
    ``STORE_NAME`` such as ``gemma3:1b`` that the model store resolves (the registry in
    ``models/``, then Ollama's on-disk store) -> {name: path}.

    Raises ``FileNotFoundError`` for a name found nowhere, ``ValueError`` for a refused one.
    """
    from pyengine.gateway.store import resolve_model

    models: dict[str, Path] = {}
    for arg in args:
        name, sep, target = arg.partition("=")
        if not sep or not name or Path(arg).expanduser().is_file():  # "a=b.gguf" may be a file
            target = arg
            name = Path(arg).stem if _looks_like_path(arg) else arg
        if name in models:
            raise ValueError(f"model name {name!r} is given twice")
        looks_like_path = _looks_like_path(target)
        # Paths are checked when the app is built; other names go through the store now.
        models[name] = Path(target).expanduser() if looks_like_path \
            else Path(resolve_model(target).path)
    return models


# uvicorn's pure-Python HTTP/1.1 parser, whatever else is installed: it bounds a request's head
# (a megabyte of headers is refused) and answers malformed requests with 400, where the httptools
# parser that uvicorn prefers when present (Ray Serve installs it) accepts them.
HTTP_IMPL = "h11"


def serve(models: Mapping[str, str | os.PathLike[str]], host: str, port: int,
          log_level: str = "info", **app_options: Any) -> None:
    """Serves ``models`` on ``host:port`` until interrupted (see ``create_app``)."""
    import uvicorn

    from pyengine.server.app import create_app

    app = create_app(models, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=HTTP_IMPL)
