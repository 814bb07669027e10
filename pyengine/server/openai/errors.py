"""Errors as OpenAI reports them: ``{"error": {"message", "type", "param", "code"}}``.

The app's handlers answer errors in Ollama's shape (``{"error": "..."}``). Routes under
``/v1`` are built with ``OpenAIRoute``, which turns what they raise into OpenAI's shape before
it reaches those handlers, so OpenAI clients raise their typed exceptions
(``BadRequestError``, ``NotFoundError``, ...) with a readable message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pyengine.server.errors import APIError, log


class OpenAIError(APIError):
    """An ``APIError`` that also names the request field at fault (``param``) and a machine
    readable ``code`` (``"model_not_found"``, ...), as OpenAI's errors do."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(status_code, message)
        self.param = param
        self.code = code


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A 400: a malformed request, or one asking for something this server cannot do."""
    return OpenAIError(400, message, param=param, code=code)


def error_type(status_code: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (a missing model is a request error there)."""
    if status_code >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error",
            429: "rate_limit_error"}.get(status_code, "invalid_request_error")


def error_body(status_code: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON object OpenAI sends with an error status (or as an event of a failed stream)."""
    return {"error": {"message": message, "type": error_type(status_code), "param": param,
                      "code": code}}


def error_response(status_code: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    """An error answered in OpenAI's shape."""
    return JSONResponse(error_body(status_code, message, param, code), status_code=status_code,
                        headers=headers)


class OpenAIRoute(APIRoute):
    """A route whose errors leave in OpenAI's shape rather than the app's (Ollama's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as e:
                return error_response(e.status_code, e.message, e.param, e.code)
            except APIError as e:  # raised by helpers shared with Ollama's API
                return error_response(e.status_code, e.message)
            except HTTPException as e:
                return error_response(e.status_code, str(e.detail),
                                      headers=getattr(e, "headers", None))
            except Exception as e:  # noqa: BLE001 (a bug: logged, answered in OpenAI's shape)
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(500, str(e) or type(e).__name__)

        return answer
