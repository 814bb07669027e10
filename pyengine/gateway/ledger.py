"""The cost ledger: every completion the fallback chain served, in SQLite, so monthly totals
survive restarts. Local calls cost nothing; paid calls cost their tokens at the provider's
price. ``python -m pyengine costs`` prints the report."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,            -- unix time of the call's end
    month TEXT NOT NULL,         -- YYYY-MM (UTC) the spend counts against
    backend TEXT NOT NULL,       -- native | ollama | openai | anthropic
    model TEXT NOT NULL,
    tier TEXT,
    task_type TEXT,
    paid INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_month ON calls (month, paid);
"""


def default_ledger_path() -> Path:
    """``PYENGINE_LEDGER`` if set, else ``~/.pyengine/ledger.sqlite``."""
    env = os.environ.get("PYENGINE_LEDGER", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".pyengine" / "ledger.sqlite"


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


class CostLedger:
    """Append-only record of served calls; thread-safe; one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_ledger_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, backend: str, model: str, paid: bool, prompt_tokens: int,
               completion_tokens: int, cost_usd: float, tier: str | None = None,
               task_type: str | None = None, ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        with self._lock:
            self._db.execute(
                "INSERT INTO calls (ts, month, backend, model, tier, task_type, paid, "
                "prompt_tokens, completion_tokens, cost_usd) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (ts, month_of(ts), backend, model, tier, task_type, int(paid), int(prompt_tokens),
                 int(completion_tokens), float(cost_usd)))

    def month_spend(self, month: str | None = None) -> float:
        """Paid spend (USD) of ``month`` (YYYY-MM, default the current UTC month)."""
        month = month or month_of(time.time())
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM calls "
                                   "WHERE month = ? AND paid = 1", (month,)).fetchone()
        return float(row[0])

    def report(self, month: str | None = None) -> dict[str, Any]:
        """Totals of ``month`` (default current): per backend and per task type, local vs paid."""
        month = month or month_of(time.time())
        with self._lock:
            rows = self._db.execute(
                "SELECT backend, COALESCE(task_type, '-'), paid, COUNT(*), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(cost_usd) FROM calls WHERE month = ? "
                "GROUP BY backend, task_type, paid ORDER BY backend, task_type",
                (month,)).fetchall()
        groups = [{"backend": b, "task_type": t, "paid": bool(p), "calls": n,
                   "prompt_tokens": pt or 0, "completion_tokens": ct or 0, "cost_usd": c or 0.0}
                  for b, t, p, n, pt, ct, c in rows]
        local = [g for g in groups if not g["paid"]]
        paid = [g for g in groups if g["paid"]]
        return {
            "month": month,
            "local_calls": sum(g["calls"] for g in local),
            "paid_calls": sum(g["calls"] for g in paid),
            "local_cost_usd": sum(g["cost_usd"] for g in local),
            "paid_cost_usd": sum(g["cost_usd"] for g in paid),
            "groups": groups,
        }


def format_report(rep: dict[str, Any]) -> str:
    """The report as a table."""
    lines = [f"costs for {rep['month']}: {rep['local_calls']} local calls "
             f"(${rep['local_cost_usd']:.4f}), {rep['paid_calls']} paid calls "
             f"(${rep['paid_cost_usd']:.4f})", "",
             f"{'BACKEND':<10} {'TASK':<20} {'KIND':<5} {'CALLS':>6} {'TOKENS IN':>10} "
             f"{'TOKENS OUT':>10} {'COST USD':>10}"]
    for g in rep["groups"]:
        kind = "paid" if g["paid"] else "local"
        lines.append(f"{g['backend']:<10} {g['task_type']:<20} {kind:<5} "
                     f"{g['calls']:>6} {g['prompt_tokens']:>10} {g['completion_tokens']:>10} "
                     f"{g['cost_usd']:>10.4f}")
    return "\n".join(lines)
