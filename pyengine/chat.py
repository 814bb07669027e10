"""Gemma's chat turn format."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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
