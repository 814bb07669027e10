"""Errors as Ollama reports them: ``{"error": "..."}`` with the HTTP status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("pyengine.server")


class APIError(Exception):
    """An error answered as ``{"error": message}`` with ``status_code``."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def bad_request(message: str) -> APIError:
    """A 400: the request is malformed or asks for something this server cannot do."""
    return APIError(400, message)


def error_response(status_code: int, message: str) -> JSONResponse:
    """The JSON body Ollama sends with an error status."""
    return JSONResponse({"error": message}, status_code=status_code)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the app as ``{"error": ...}``, never as FastAPI's ``detail``."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status_code, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        return error_response(400, f"{where}: {message}" if where else message)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, so the server logs it.
        return error_response(500, str(exc) or type(exc).__name__)
