"""A request's routing key: the chained hashes of the first token blocks of the prompt it will
run, computed at the ingress from the request body the way the engine's prefix cache keys its
blocks (a block's hash covers every token before it), so two requests that share a cached
prefix share their first hashes however they continue. Tokenizing needs only the model's
vocabulary (``_core.Tokenizer``), not its weights."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from pyengine.chat import format_chat

BLOCK_TOKENS = 16    # the KV arena's block: the unit the prefix cache shares
MAX_BLOCKS = 256     # 4,096 tokens: enough to tell system prompts and rubrics apart


def block_hashes(ids: list[int], block: int = BLOCK_TOKENS, limit: int = MAX_BLOCKS) -> list[str]:
    """Chained hashes of the full blocks of ``ids`` (at most ``limit``): hash i covers blocks
    0..i, so a shared prefix of k blocks gives k equal hashes."""
    out: list[str] = []
    h = hashlib.blake2b(digest_size=8)
    for b in range(min(len(ids) // block, limit)):
        h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in ids[b * block:(b + 1) * block]))
        out.append(h.copy().hexdigest())
    return out


def matched_blocks(blocks: list[str], seen) -> int:
    """How many leading hashes of ``blocks`` are in ``seen``: chained hashes, so the first miss
    ends the shared prefix."""
    n = 0
    for h in blocks:
        if h not in seen:
            break
        n += 1
    return n


def _messages(path: str, body: Mapping[str, Any]) -> tuple[list[dict], bool] | None:
    """The conversation a request will run, and whether it is raw text (no chat template)."""
    if path in ("/api/chat", "/v1/chat/completions"):
        msgs = body.get("messages")
        if not isinstance(msgs, list):
            return None
        return [m for m in msgs if isinstance(m, dict)], False
    if path in ("/api/generate", "/v1/completions"):
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return None
        raw = path == "/v1/completions" or bool(body.get("raw"))
        msgs = [{"role": "user", "content": prompt}]
        if isinstance(body.get("system"), str) and not raw:
            msgs.insert(0, {"role": "system", "content": body["system"]})
        return msgs, raw
    return None


class PrefixKeys:
    """Routing keys of requests for the models an ingress serves (name -> GGUF path)."""

    def __init__(self, models: Mapping[str, str | os.PathLike[str]]):
        self._paths = {name: str(p) for name, p in models.items()}
        self._tokenizers: dict[str, Any] = {}
        self._arch: dict[str, str] = {}

    def _tokenizer(self, model: str):
        if model not in self._tokenizers:
            from pyengine import _core

            path = self._paths[model]
            self._tokenizers[model] = _core.Tokenizer(path)
            meta = _core.read_gguf(path, 0)[0]
            self._arch[model] = str(meta.get("general.architecture", "gemma3"))
        return self._tokenizers[model]

    def model_of(self, body: Mapping[str, Any]) -> str | None:
        """The served model a body names (``name`` or ``name:latest``), or None."""
        name = body.get("model")
        if not isinstance(name, str):
            return None
        for candidate in (name, name.removesuffix(":latest"), f"{name}:latest"):
            if candidate in self._paths:
                return candidate
        return None

    def blocks(self, path: str, body_bytes: bytes) -> list[str]:
        """The routing key of a request: its prompt's block hashes, or [] when it has no
        prompt this ingress can read (other endpoints, unknown models, malformed bodies: the
        replica answers those as usual)."""
        try:
            body = json.loads(body_bytes) if body_bytes else None
        except (ValueError, UnicodeDecodeError):
            return []
        if not isinstance(body, dict):
            return []
        model = self.model_of(body)
        conv = _messages(path, body)
        if model is None or conv is None:
            return []
        msgs, raw = conv
        try:
            tok = self._tokenizer(model)
            if raw:
                text = "".join(str(m.get("content", "")) for m in msgs)
            else:
                text = format_chat([{"role": str(m.get("role", "user")),
                                     "content": str(m.get("content") or "")} for m in msgs],
                                   self._arch[model])
            return block_hashes(tok.tokenize(text, True, True))
        except Exception:  # noqa: BLE001 - a key is a hint: no key, and the replica decides
            return []
