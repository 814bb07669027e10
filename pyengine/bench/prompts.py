"""The A/B workload's prompts: a built-in set of short, varied chat prompts, or a file.

A prompt is a conversation (a list of messages) or a text. A prompts file holds one prompt per
line: plain text or JSON ``{"prompt": "..."}`` (a text), or JSON: a list of messages or
``{"messages": [...]}`` (a conversation). Blank lines are skipped. A chat request sends a text
as one user message; a raw completion request sends it as it is and renders a conversation
with a chat template first (``template.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]  # a text, or a conversation

BUILTIN_PROMPTS: tuple[str, ...] = (
    "Why is the sky blue? Answer in two sentences.",
    "Write a haiku about a lighthouse in winter.",
    "List five uses for a paperclip.",
    "Explain what a hash table is to a ten-year-old.",
    "Translate 'Where is the train station?' into French, Spanish and German.",
    "Write a Python function that reverses the words of a sentence.",
    "What are the main differences between TCP and UDP?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Give me three tips for writing a clear email.",
    "What is 17 times 23? Show your working.",
    "Suggest a name for a bakery that sells only bread made with rye.",
    "Describe the water cycle step by step.",
)


def builtin_prompts() -> list[Prompt]:
    """The built-in prompts, each as a one-message conversation."""
    return [[{"role": "user", "content": p}] for p in BUILTIN_PROMPTS]


def as_messages(prompt: Prompt) -> list[Message]:
    """The prompt as a conversation: a text becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, dict):
        if "messages" in value:
            value = value["messages"]
        elif isinstance(value.get("prompt"), str):
            return value["prompt"]
        else:
            raise ValueError(f"{where}: a JSON object needs \"messages\" or \"prompt\"")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages")
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            msg = f"{where}: each message needs string \"role\" and \"content\""
            raise ValueError(msg)  # noqa: TRY004 (a malformed file, like bad JSON in it)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load_prompts(path: str | Path) -> list[Prompt]:
    """Texts and conversations from a prompts file (see the module docstring); ``ValueError``
    when it has none or a malformed JSON line, ``FileNotFoundError`` when it is missing."""
    path = Path(path)
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text[0] in "[{":
            try:
                value = json.loads(text)
            except ValueError:
                value = None  # text that merely starts with a bracket
            if value is not None:
                prompts.append(_prompt(value, f"{path}:{number}"))
                continue
        prompts.append(text)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts
