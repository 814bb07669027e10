"""The front door: a task description and a prompt (or chat messages) in; the completion, with
the model, tier, backend and cost that served it, out.

    from pyengine import complete
    r = complete({"type": "summarization", "priority": 5, "estimated_tokens": 400,
                  "requires_high_quality": False}, "Summarise: ...")
    r.text, r.model, r.tier, r.backend, r.cost_usd, r.reason, r.attempts

The task is routed by ``routing.select_model`` (the tier's model, and the token limit or
temperature its rule prescribes unless the call sets them), then served by the fallback chain.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

from pyengine.gateway.config import Config
from pyengine.gateway.chain import FallbackChain, Result
from pyengine.gateway.routing import Task, select_model


class Gateway:
    """Routing plus the fallback chain, configured once (``Config.from_env()`` by default)."""

    def __init__(self, config: Config | None = None, chain: FallbackChain | None = None,
                 **chain_options: Any) -> None:
        self.config = config or Config.from_env()
        self.chain = chain or FallbackChain(self.config, **chain_options)

    def complete(self, task: Task | Mapping[str, Any] | Any, prompt: str | None = None,
                 messages: Sequence[Mapping[str, Any]] | None = None, system: str | None = None,
                 **options: Any) -> Result:
        """Routes ``task`` and serves ``prompt`` (or Ollama-style ``messages``)."""
        if (prompt is None) == (messages is None):
            raise ValueError("give either prompt or messages")
        t = Task.of(task)
        selection = select_model(t, self.config)
        if selection.max_tokens is not None and "num_predict" not in options:
            options.setdefault("max_tokens", selection.max_tokens)
        if selection.temperature is not None:
            options.setdefault("temperature", selection.temperature)
        if messages is None:
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string")
            messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return self.chain.run(selection, messages, options, task_type=t.type)

    def close(self) -> None:
        self.chain.close()


_default: Gateway | None = None
_default_lock = threading.Lock()


def complete(task: Task | Mapping[str, Any] | Any, prompt: str | None = None,
             messages: Sequence[Mapping[str, Any]] | None = None, **options: Any) -> Result:
    """``Gateway.complete`` on a process-wide gateway configured from the environment."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Gateway()
    return _default.complete(task, prompt, messages, **options)
