"""The part of Ollama's Go prompt templates that a ``/api/generate`` ``template`` needs.

Supported: text, ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``, ``{{ if .X }}`` ...
``{{ else }}`` ... ``{{ end }}`` on those fields, comments ``{{/* */}}``, and the ``{{-``/``-}}``
whitespace trimming. As in Ollama, rendering stops at ``.Response``: the model writes the
response. Anything else (``.Messages``, ``range``, functions) raises ``TemplateError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Union

_FIELDS = ("System", "Prompt", "Response")


class TemplateError(ValueError):
    """A template this server cannot render."""


@dataclass
class _If:
    name: str
    then: list["_Node"] = field(default_factory=list)
    otherwise: list["_Node"] = field(default_factory=list)


_Node = Union[str, "_Field", _If]


@dataclass
class _Field:
    name: str


def _field(expr: str, action: str) -> str:
    m = re.fullmatch(r"\.(\w+)", expr.strip())
    if m is None or m.group(1) not in _FIELDS:
        raise TemplateError(f"template: unsupported action {{{{{action}}}}}; this server renders "
                            "only .System, .Prompt and .Response, with if/else/end")
    return m.group(1)


class _Action:
    """One ``{{ ... }}``: its span, its body and its trim markers (``{{- `` and `` -}}``)."""

    def __init__(self, start: int, end: int, body: str) -> None:
        self._start, self._end = start, end
        self.trim_left = len(body) >= 2 and body[0] == "-" and body[1].isspace()
        if self.trim_left:
            body = body[2:]
        self.trim_right = len(body) >= 2 and body[-1] == "-" and body[-2].isspace()
        self.body = body[:-2] if self.trim_right else body

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, i: int) -> Any:
        return {1: self.trim_left, 2: self.body, 3: self.trim_right}[i]


def _actions(template: str) -> Iterator[_Action]:
    # A linear scan: a regular expression with a lazy body was quadratic on an unclosed "{{"
    # (seconds for 20 KB of hostile template, on the server's event loop).
    pos = 0
    while (start := template.find("{{", pos)) >= 0:
        end = template.find("}}", start + 2)
        if end < 0:
            raise TemplateError("template: unclosed action (no }} after {{)")
        yield _Action(start, end + 2, template[start + 2:end])
        pos = end + 2


def _parse(template: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_If, bool]] = []  # open ifs, and whether we are in their else branch
    out = root
    pos = 0
    trim_next = False
    for m in _actions(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            out.append(text)
        trim_next = bool(m.group(3))
        pos = m.end()
        action = m.group(2).strip()
        if action.startswith("/*") and action.endswith("*/"):
            continue
        if action.startswith("if "):
            node = _If(_field(action[3:], m.group(2)))
            out.append(node)
            stack.append((node, False))
            out = node.then
        elif action == "else":
            if not stack or stack[-1][1]:
                raise TemplateError("template: unexpected {{else}}")
            node = stack[-1][0]
            stack[-1] = (node, True)
            out = node.otherwise
        elif action == "end":
            if not stack:
                raise TemplateError("template: unexpected {{end}}")
            stack.pop()
            out = root if not stack else (stack[-1][0].otherwise if stack[-1][1]
                                          else stack[-1][0].then)
        else:
            out.append(_Field(_field(action, m.group(2))))
    if stack:
        raise TemplateError("template: unexpected EOF: an {{if}} has no {{end}}")
    text = template[pos:]
    if trim_next:
        text = text.lstrip()
    if text:
        out.append(text)
    return root


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with ``values`` (``System``, ``Prompt``) filled in, cut at ``.Response``."""
    nodes = _parse(template)
    parts: list[str] = []

    def walk(seq: list[_Node]) -> bool:  # False once .Response is reached
        for node in seq:
            if isinstance(node, str):
                parts.append(node)
            elif isinstance(node, _Field):
                if node.name == "Response":
                    return False
                parts.append(values.get(node.name, ""))
            elif not walk(node.then if values.get(node.name) else node.otherwise):
                return False
        return True

    walk(nodes)
    return "".join(parts)


# The turn format this engine applies, written as an Ollama template (``/api/show`` shows it).
GEMMA_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n"
)
# Gemma 4's turns as chat_gemma4 renders them: the system prompt is a turn of its own, and the
# model's turn opens with an empty thought (thinking off).
GEMMA4_TEMPLATE = (
    "{{ if .System }}<|turn>system\n{{ .System }}<turn|>\n{{ end }}<|turn>user\n{{ .Prompt }}"
    "<turn|>\n<|turn>model\n<|channel>thought\n<channel|>{{ .Response }}<turn|>\n"
)
# The template and the end-of-turn stop /api/show reports for a model family.
SHOWN = {"gemma4": (GEMMA4_TEMPLATE, "<turn|>")}
SHOWN_DEFAULT = (GEMMA_TEMPLATE, "<end_of_turn>")
