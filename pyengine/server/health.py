"""``GET /health``: the process is up and answering, without touching any model."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"])
async def health() -> dict[str, str]:
    """``{"status": "ok"}`` while the server answers (a liveness check: loads nothing)."""
    return {"status": "ok"}
