"""RFC 3339 time stamps, as Ollama writes ``created_at``, ``modified_at`` and ``expires_at``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# What a model that never expires reports: Go's largest duration from now, as Ollama does.
_FOREVER = timedelta(days=106_751)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:34:56.789012Z`` for UTC times, with the offset otherwise."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    text = moment.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def after(seconds: float, start: datetime | None = None) -> datetime:
    """``start`` (default now) plus ``seconds``; infinite or huge values give the far future."""
    start = start or utc_now()
    try:
        return start + timedelta(seconds=seconds) if seconds < _FOREVER.total_seconds() \
            else start + _FOREVER
    except OverflowError:
        return start + _FOREVER
