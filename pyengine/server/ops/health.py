"""``GET /health``: the process is up and answering, without touching any model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> dict[str, Any]:
    """``{"status": "ok"}`` while the server answers (a liveness check: loads nothing); when a
    model it was given cannot run here, ``"degraded"`` and why, by model."""
    models = request.app.state.models
    down = {e.name: models.unavailable(e.name) for e in models.entries()
            if models.unavailable(e.name)}
    return {"status": "degraded", "unavailable": down} if down else {"status": "ok"}
