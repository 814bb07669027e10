"""Gemma's chat turn formats, one per architecture: ``format_chat`` picks the model's.

Gemma 3 and Gemma 3n share ``format_gemma`` (``<start_of_turn>``, no system role, no tool
format: tools reach them as plain turns, see ``structured.tools``); Gemma 4 has its own
(``chat_gemma4.format_gemma4``: a system role, tool declarations, calls and results).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pyengine.chat_gemma4 import format_gemma4

# Architectures whose chat format declares tools and writes tool calls itself.
NATIVE_TOOL_ARCHS = ("gemma4",)

_ROLES = {"system", "user", "assistant", "model", "tool"}


def format_gemma(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Renders Ollama-style chat messages in Gemma's turn format.

    ``<start_of_turn>user\\n{content}<end_of_turn>\\n`` per turn, assistant turns as ``model``;
    system messages are folded into the first user turn, followed by a blank line (Gemma has
    no system role). Contents are stripped as llama.cpp's and the model's own template do.
    With ``add_generation_prompt`` the text ends with an open ``model`` turn.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role', 'content'} objects")
    system: list[str] = []
    out: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"message {i} is not an object")
        role = msg.get("role")
        content = msg.get("content", "")
        if role not in _ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string")
        if role == "system":
            system.append(content.strip())
            continue
        turn = "model" if role in ("assistant", "model") else "user"
        out.append(f"<start_of_turn>{turn}\n")
        if system and turn == "user":
            out.append("\n\n".join(system) + "\n\n")
            system = []
        out.append(content.strip() + "<end_of_turn>\n")
    if system:  # only system messages: they still reach the model as a user turn
        out.append("<start_of_turn>user\n" + "\n\n".join(system) + "\n\n<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def native_tools(arch: str) -> bool:
    """Whether models of ``arch`` have a tool-call format of their own (Gemma 4)."""
    return arch in NATIVE_TOOL_ARCHS


def format_chat(messages: Sequence[Mapping[str, Any]], arch: str = "gemma3",
                tools: Sequence[Mapping[str, Any]] | None = None,
                add_generation_prompt: bool = True) -> str:
    """``messages`` in the chat format of the model's architecture (``general.architecture``,
    the engine's ``config["arch"]``): Gemma 4's for ``gemma4``, Gemma 3's otherwise.

    ``tools`` are declared in the prompt by formats that have tool declarations (Gemma 4);
    for the others they must already be turns (``structured.tools.plan_chat``), so passing
    them is a ``ValueError``.
    """
    if native_tools(arch):
        return format_gemma4(messages, tools, add_generation_prompt)
    if tools:
        raise ValueError(f"the {arch} chat format has no tool declarations: render the tools "
                         "as turns (structured.tools.plan_chat)")
    return format_gemma(messages, add_generation_prompt)
