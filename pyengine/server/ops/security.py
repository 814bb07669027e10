"""Who may call the server: the browser origins CORS allows, and an optional bearer token.

Origins follow Ollama (``envconfig.Origins``): local pages on localhost, 127.0.0.1 and 0.0.0.0
(http or https, any port) and desktop app schemes are allowed; ``PYENGINE_ORIGINS`` (else
``OLLAMA_ORIGINS``) and ``--origins`` add comma-separated patterns in which ``*`` matches
anything, and ``*`` alone allows every origin. The token, off by default, is
``PYENGINE_API_KEY`` or ``--api-key``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from pyengine.server.ops.refusals import send_error

ORIGINS_ENV = ("PYENGINE_ORIGINS", "OLLAMA_ORIGINS")  # the first one set wins
API_KEY_ENV = "PYENGINE_API_KEY"

DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
    for scheme in ("http", "https")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# What browsers may send cross-origin: Ollama's list, which covers the OpenAI SDKs' headers.
CORS_HEADERS = (
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
    "x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
)
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
CORS_MAX_AGE = 12 * 3600  # as Ollama's CORS defaults: browsers cache a preflight for 12 h

OPEN_PATHS = frozenset({"/", "/health"})  # liveness checks never need the token
UNAUTHORIZED = "unauthorized"


def _split(value: str | Iterable[str] | None) -> list[str]:
    """Comma-separated items (of one string or of several), trimmed of spaces and quotes."""
    items = [value] if isinstance(value, str) else list(value or ())
    parts = (part.strip().strip("\"'").strip() for item in items for part in item.split(","))
    return [part for part in parts if part]


def resolve_origins(extra: str | Sequence[str] | None = None,
                    env: Mapping[str, str] | None = None) -> list[str]:
    """Allowed origin patterns: ``extra``, then the environment's, then Ollama's defaults.

    ``extra`` and the variables are comma-separated (``extra`` may also be a list of them).
    """
    env = os.environ if env is None else env
    from_env: list[str] = []
    for name in ORIGINS_ENV:
        from_env = _split(env.get(name))
        if from_env:
            break
    patterns: list[str] = []
    for item in _split(extra) + from_env + list(DEFAULT_ORIGINS):
        if item not in patterns:
            patterns.append(item)
    return patterns


def origin_regex(patterns: Iterable[str]) -> str:
    """One regular expression that fully matches the origins ``patterns`` allow (``*``: any
    run of characters; case-insensitive, as browsers lower-case scheme and host)."""
    alternatives = [".*".join(re.escape(part) for part in p.split("*")) for p in patterns]
    return "(?i)(?:" + "|".join(alternatives) + ")"


def cors_options(patterns: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of Starlette's ``CORSMiddleware`` for ``patterns``."""
    options: dict[str, Any] = {"allow_methods": list(CORS_METHODS),
                               "allow_headers": list(CORS_HEADERS), "max_age": CORS_MAX_AGE}
    if "*" in patterns:
        options["allow_origins"] = ["*"]
    else:
        options["allow_origin_regex"] = origin_regex(patterns)
    return options


def resolve_api_key(value: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """``value``, else ``PYENGINE_API_KEY``; None (no token required) when empty or unset.

    Pass ``""`` to turn the token off whatever the environment says.
    """
    if value is None:
        value = (os.environ if env is None else env).get(API_KEY_ENV)
    value = (value or "").strip()
    if not all("!" <= c <= "~" for c in value):  # what a header carries safely
        raise ValueError("the API key must be printable ASCII without spaces")
    return value or None


def _digest(data: bytes) -> bytes:
    # Comparing digests keeps the comparison's time independent of the key's length too.
    return hashlib.sha256(data).digest()


class APIKeyMiddleware:
    """Requires ``Authorization: Bearer <api_key>`` on every route but ``/`` and ``/health``.

    Others get 401 with ``{"error": "unauthorized"}`` (OpenAI's error object under ``/v1``).
    CORS preflights never carry credentials: the CORS middleware, installed outside this one,
    answers them first.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self.app = app
        self._expected = _digest(api_key.encode())

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries the right bearer token."""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and \
                    hmac.compare_digest(_digest(token.strip()), self._expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_error(scope, send, 401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
