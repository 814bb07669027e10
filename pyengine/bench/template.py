"""Chat templates for raw completion requests: the harness formats a conversation itself, so
both sides of a comparison complete exactly the same text.

Servers format chat requests their own way (pyengine and Ollama with Gemma's turn format,
llama-server with the file's Jinja template or, for a file without one, its ChatML default), so
their greedy replies can differ from the first token on. With ``--raw`` a conversation is
rendered here, once, and sent to both sides as a completion prompt.

A template comes from ``--chat-template``:

- ``gemma`` (the default): Gemma's turn format (``pyengine.chat.format_gemma``), what Ollama's
  Gemma templates and the Gemma GGUFs' own templates produce;
- ``gemma4``: Gemma 4's turn format (``pyengine.chat_gemma4.format_gemma4``), what pyengine
  and Ollama's Gemma 4 renderer send a Gemma 4 model;
- a GGUF file: its ``tokenizer.chat_template`` (Jinja, rendered as Hugging Face's
  ``apply_chat_template`` renders it; needs jinja2), or Gemma's turn format when it has none.

Both servers add the beginning-of-sequence token when they tokenize a completion prompt, as the
file asks (``tokenizer.ggml.add_bos_token``); a template that writes ``{{ bos_token }}`` itself
would double it, so a leading BOS text is cut from the rendered prompt (as llama-server does
with its own Jinja rendering).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Messages = Sequence[Mapping[str, Any]]

GEMMA = "gemma"
GEMMA4 = "gemma4"
_TEMPLATE_KEY = "tokenizer.chat_template"


class TemplateError(ValueError):
    """A template that cannot be read or rendered."""


@dataclass(frozen=True)
class ChatTemplate:
    """Renders a conversation as the text a model completes (with an open model turn)."""

    name: str  # "gemma", or "<file>: tokenizer.chat_template"
    _render: Callable[[Messages], str] = field(repr=False, compare=False)

    def render(self, messages: Messages) -> str:
        """The conversation as a completion prompt, without a leading BOS text."""
        return self._render(messages)


def gemma_template() -> ChatTemplate:
    """Gemma's turn format, the same code the server formats chat requests with."""
    from pyengine.chat import format_gemma

    return ChatTemplate(GEMMA, format_gemma)


def gemma4_template() -> ChatTemplate:
    """Gemma 4's turn format, the same code the server formats Gemma 4 chat requests with."""
    from pyengine.chat_gemma4 import format_gemma4

    return ChatTemplate(GEMMA4, format_gemma4)


def jinja_template(source: str, name: str, bos_token: str = "", eos_token: str = "",
                   strip_bos: bool = True) -> ChatTemplate:
    """A Jinja chat template rendered as Hugging Face's ``apply_chat_template`` does it
    (sandboxed, ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception``), with
    ``add_generation_prompt``; with ``strip_bos`` a leading ``bos_token`` is cut."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TemplateError("rendering a file's chat template needs jinja2 "
                            "(pip install jinja2), or use --chat-template gemma") from None

    def raise_exception(message: str) -> None:
        raise TemplateError(f"chat template {name}: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(source)
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template {name}: {e}") from None

    def render(messages: Messages) -> str:
        try:
            text = compiled.render(messages=[dict(m) for m in messages], bos_token=bos_token,
                                   eos_token=eos_token, add_generation_prompt=True)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template {name}: {e}") from None
        if strip_bos and bos_token and text.startswith(bos_token):
            text = text[len(bos_token):]
        return text

    return ChatTemplate(name, render)


def _token_text(meta: Mapping[str, Any], key: str) -> str:
    """The text of the special token whose id ``meta[key]`` holds ('' when unknown)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    token_id = meta.get(key)
    if isinstance(tokens, list) and isinstance(token_id, int) and 0 <= token_id < len(tokens):
        return str(tokens[token_id])
    return ""


def template_from_gguf(path: str | Path) -> ChatTemplate:
    """The file's own chat template, or Gemma's turn format when the file has none."""
    from pyengine import _core

    try:
        # Arrays cut at 4096 entries: the special tokens' ids are small.
        meta, _tensors, _lengths, _info = _core.read_gguf(str(path), 4096)
    except (OSError, ValueError) as e:
        raise TemplateError(f"--chat-template {path}: {e}") from None
    source = meta.get(_TEMPLATE_KEY)
    if not isinstance(source, str) or not source.strip():
        template = gemma_template()
        return ChatTemplate(f"{GEMMA} ({Path(path).name} has no chat template)",
                            template._render)
    return jinja_template(source, f"{Path(path).name}: {_TEMPLATE_KEY}",
                          bos_token=_token_text(meta, "tokenizer.ggml.bos_token_id"),
                          eos_token=_token_text(meta, "tokenizer.ggml.eos_token_id"),
                          strip_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)))


def load_template(source: str | None) -> ChatTemplate:
    """``--chat-template``: ``gemma`` (or None), ``gemma4`` or a GGUF file (see the module
    docstring)."""
    if source is None or source.strip().lower() == GEMMA:
        return gemma_template()
    if source.strip().lower() == GEMMA4:
        return gemma4_template()
    path = Path(source).expanduser()
    if not path.is_file():
        raise TemplateError(f"--chat-template: {source!r} is neither 'gemma' nor a GGUF file "
                            "(nor 'gemma4')")
    return template_from_gguf(path)
