"""Tool calls for models without a tool format of their own (Gemma 3), as llama.cpp's server
does it for such models: the tools are described in the prompt, and a grammar makes the reply
either plain text or one JSON object of calls of the given tools, with arguments valid under
each tool's parameter schema:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}

Plain text cannot start with "{" (nor with white space), so the reply's first character tells
the two apart, and a streamed reply's text can be passed on at once. ``tool_choice`` narrows
the grammar: "auto" (text or calls), "required" (calls), a named function (calls of it only),
"none" (text, and the tools are not described). ``parallel_tool_calls=False`` allows one call.

Earlier turns are rendered the same way: an assistant message with ``tool_calls`` becomes that
JSON object, and a ``tool`` message a user turn holding the tool's name and result.

Models with a tool format of their own (Gemma 4, ``chat.native_tools``) get it instead: the
tools are declared in the prompt as the model's chat template declares them, earlier calls and
results are written in its syntax, and the grammar makes the reply plain text or the model's own
calls, ``<|tool_call>call:NAME{...}<tool_call|>`` (``structured.gemma4_calls``), which
``parse_reply`` reads back into the same ``ToolCall`` objects. The architecture is the one
parameter that chooses (``arch``, the engine's ``config["arch"]``); ``plan_prompt`` renders a
chat request for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from pyengine.chat import format_chat, native_tools
from pyengine.chat_gemma4 import CALL_OPEN
from pyengine.structured import gemma4_calls
from pyengine.structured.formats import JSON_OPTIONS, Grammar, strict_formats

TOOL_CHOICES = ("auto", "none", "required")
T = TypeVar("T")


class ToolError(ValueError):
    """Malformed tools, tool choice or tool messages (the APIs answer with a 400); ``param``
    names the request field at fault."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


def parse_tools(tools: Any) -> list[Tool]:
    """The tools of a request, in OpenAI's and Ollama's shape
    (``{"type": "function", "function": {"name", "description", "parameters"}}``)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolError("tools must be a list")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping) or t.get("type", "function") != "function":
            raise ToolError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}')
        f = t.get("function")
        if not isinstance(f, Mapping):
            raise ToolError(f"tools[{i}].function must be an object")
        name = f.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 \
                or not all(c.isalnum() or c in "_-." for c in name):
            raise ToolError(f"tools[{i}].function.name must be 1-64 letters, digits, _ - or .")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON Schema object")
        description = f.get("description") or ""
        if not isinstance(description, str):
            raise ToolError(f"tools[{i}].function.description must be a string")
        if any(x.name == name for x in out):
            raise ToolError(f"tools[{i}]: the tool name {name!r} is given twice")
        out.append(Tool(name, description, dict(params)))
    return out


def parse_choice(choice: Any, tools: Sequence[Tool]) -> str:
    """``tool_choice`` as "auto", "none", "required" or the name of the one tool to call."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise ToolError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a "
                            f"function, got {choice!r}", "tool_choice")
        return choice
    if isinstance(choice, Mapping):
        f = choice.get("function")
        name = f.get("name") if isinstance(f, Mapping) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise ToolError('tool_choice must be {"type": "function", "function": {"name": ...}}',
                            "tool_choice")
        if not any(t.name == name for t in tools):
            raise ToolError(f"tool_choice names the unknown tool {name!r}", "tool_choice")
        return name
    raise ToolError("tool_choice must be a string or an object", "tool_choice")


def calls_schema(tools: Sequence[Tool], choice: str, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of a reply that calls tools (``choice`` "auto", "required" or a name)."""
    chosen = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    items = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": t.name}, "arguments": t.parameters}}
             for t in chosen]
    calls: dict[str, Any] = {"type": "array", "minItems": 1,
                             "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel:
        calls["maxItems"] = 1
    return {"type": "object", "additionalProperties": False, "required": ["tool_calls"],
            "properties": {"tool_calls": calls}, "x-guidance": JSON_OPTIONS}


def tool_grammar(tools: Sequence[Tool], choice: str, parallel: bool = True,
                 arch: str = "gemma3") -> Grammar | None:
    """The grammar of a reply under these tools: text or calls ("auto"), calls only
    ("required", a name); None when the reply is free ("none", or no tools). Calls are the
    JSON object above, or the model's own syntax where ``arch`` has one (Gemma 4)."""
    if not tools or choice == "none":
        return None
    if native_tools(arch):
        chosen = [(t.name, t.parameters) for t in tools
                  if choice in ("auto", "required") or t.name == choice]
        return Grammar(gemma4_calls.calls_grammar(chosen, parallel, text=choice == "auto"))
    call = f"%json {json.dumps(strict_formats(calls_schema(tools, choice, parallel)))}"
    if choice == "auto":
        return Grammar(f"start: call | text\ntext: /[^{{\\s][\\s\\S]*/\ncall: {call}\n")
    return Grammar(f"start: call\ncall: {call}\n")


def describe_tools(tools: Sequence[Tool], choice: str) -> str:
    """The text the prompt gets about the tools (a system message)."""
    listed = [{"name": t.name, "description": t.description, "parameters": t.parameters}
              for t in tools if choice in ("auto", "required") or t.name == choice]
    how = ("You must call a tool." if choice != "auto" else
           "If a tool helps, call it; otherwise answer the user in plain text.")
    return ("You can call these tools:\n" + json.dumps(listed, ensure_ascii=False) + "\n\n"
            "To call tools, answer with only a JSON object: "
            '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}. ' + how)


def render_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], choice: str,
                    names_by_id: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Chat messages with tools as plain turns: the tools described in a system message,
    assistant tool calls as the JSON the model answers with, tool results as user turns.
    ``names_by_id``: tool names of earlier calls by id (OpenAI's tool messages name the call,
    not the tool)."""
    out: list[dict[str, str]] = []
    if tools and choice != "none":
        out.append({"role": "system", "content": describe_tools(tools, choice)})
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content") or ""
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            text = json.dumps({"tool_calls": [_history_call(i, c) for c in calls]},
                              ensure_ascii=False)
            out.append({"role": "assistant", "content": (content + "\n" if content else "") + text})
        elif role == "tool":
            name = m.get("tool_name") or m.get("name") \
                or (names_by_id or {}).get(m.get("tool_call_id") or "", "")
            out.append({"role": "user",
                        "content": f"Tool result{' (' + name + ')' if name else ''}:\n{content}"})
        else:
            out.append({"role": role, "content": content})
    return out


def _history_call(i: int, call: Any) -> dict[str, Any]:
    f = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
        raise ToolError(f"messages[{i}].tool_calls must hold "
                        '{"function": {"name": ..., "arguments": ...}} objects', "messages")
    args = f.get("arguments", {})
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise ToolError(f"messages[{i}].tool_calls: arguments must be JSON",
                            "messages") from None
    if not isinstance(args, Mapping):
        raise ToolError(f"messages[{i}].tool_calls: arguments must be an object", "messages")
    return {"name": f["name"], "arguments": dict(args)}


def parse_reply(text: str, arch: str = "gemma3") -> tuple[str, list[ToolCall]]:
    """A reply made under ``tool_grammar``: (its text, "" when it calls tools; its calls)."""
    if native_tools(arch):
        if not text.startswith(CALL_OPEN):
            return text, []
        try:
            return "", [ToolCall(name, args) for name, args in gemma4_calls.parse_calls(text)]
        except gemma4_calls.ParseError:
            return text, []  # cut short by its budget
    if not text.startswith("{"):
        return text, []
    try:
        value = json.loads(text)
        calls = [ToolCall(c["name"], dict(c["arguments"])) for c in value["tool_calls"]]
    except (ValueError, KeyError, TypeError):
        return text, []  # cut short by its budget, or a grammar that allows other JSON
    return "", calls


def _parse_request(tools: Any, choice: Any, parallel: Any, fmt: Any) -> tuple[list[Tool], str]:
    # The tools and the choice among them, checked against the rest of the request.
    parsed = parse_tools(tools)
    mode = parse_choice(choice, parsed)
    if parsed and mode != "none" and fmt is not None:
        raise ToolError("a reply follows either a format or the tools: give one of them",
                        "response_format")
    if not isinstance(parallel, bool):
        raise ToolError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    return parsed, mode


def plan_chat(messages: Sequence[Mapping[str, Any]], tools: Any, choice: Any, parallel: bool,
              fmt: Any, names_by_id: Mapping[str, str] | None = None
              ) -> tuple[list[dict[str, str]], Any]:
    """A chat request with tools as the engine runs it: the messages as plain turns and the
    format of the reply (the tool grammar, or ``fmt`` without tools)."""
    parsed, mode = _parse_request(tools, choice, parallel, fmt)
    rendered = render_messages(messages, parsed, mode, names_by_id)
    grammar = tool_grammar(parsed, mode, parallel)
    return rendered, grammar if grammar is not None else fmt


def plan_prompt(messages: Sequence[Mapping[str, Any]], tools: Any, choice: Any, parallel: bool,
                fmt: Any, names_by_id: Mapping[str, str] | None = None, arch: str = "gemma3"
                ) -> tuple[str, Any]:
    """A chat request as a model of ``arch`` runs it: the prompt text (ready for the
    tokenizer, which adds BOS) and the format of the reply (the tool grammar, or ``fmt``
    without tools). Gemma 3 and 3n get ``plan_chat``'s turns in Gemma's format; Gemma 4 its own
    format with the tools declared natively. ``ToolError`` for bad tools or tool messages,
    ``ValueError`` for messages the format refuses."""
    if not native_tools(arch):
        turns, out = plan_chat(messages, tools, choice, parallel, fmt, names_by_id)
        return format_chat(turns, arch), out
    parsed, mode = _parse_request(tools, choice, parallel, fmt)
    chosen = {t.name for t in parsed if mode in ("auto", "required") or t.name == mode}
    declared = [t for t in tools or () if mode != "none" and t["function"]["name"] in chosen]
    text = format_chat(native_history(messages, names_by_id), arch, tools=declared or None)
    grammar = tool_grammar(parsed, mode, parallel, arch)
    return text, grammar if grammar is not None else fmt


def native_history(messages: Sequence[Mapping[str, Any]],
                   names_by_id: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Messages for a format that writes tool calls itself: each earlier call checked, its
    arguments an object (OpenAI sends JSON text), and each tool result named where only
    ``names_by_id`` knows its tool."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            out.append(m)  # type: ignore[arg-type]  # the format names the fault
            continue
        msg = dict(m)
        if msg.get("role") == "assistant" and msg.get("tool_calls"):
            calls = msg["tool_calls"]
            if not isinstance(calls, list):
                raise ToolError(f"messages[{i}].tool_calls must be a list", "messages")
            msg["tool_calls"] = [
                {"id": c.get("id"), "function": {"name": h["name"], "arguments": h["arguments"]}}
                for c, h in ((c, _history_call(i, c)) for c in calls)]
        elif msg.get("role") == "tool" and not (msg.get("tool_name") or msg.get("name")):
            name = (names_by_id or {}).get(msg.get("tool_call_id") or "")
            if name:
                msg["tool_name"] = name
        out.append(msg)
    return out


class CallFilter:
    """A reply made under a tool grammar, as a server streams it: text pieces pass as they
    come unless the reply opens with a call ("{", or ``<|tool_call>`` for Gemma 4; plain text
    cannot), which is held back and given as calls at the end. Inactive (no tools),
    everything passes."""

    def __init__(self, active: bool, arch: str = "gemma3") -> None:
        self.active = active
        self.arch = arch
        self._opener = CALL_OPEN if native_tools(arch) else "{"
        self._calling: bool | None = None

    def piece(self, text: str, make: Callable[[str], T]) -> T | None:
        """``make(text)``, or None for a piece of a call."""
        if self.active and self._calling is None and text:
            self._calling = text.startswith(self._opener)
        return None if self._calling else make(text)

    def calls(self, text: str) -> list[ToolCall]:
        """The calls the whole reply ``text`` makes ([] for text, or without tools)."""
        return parse_reply(text, self.arch)[1] if self.active else []
