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
JSON object, and a ``tool`` message a user turn holding the tool's name and result. A model
with a native tool format (Gemma 4) would get its own renderer and parser here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

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


def tool_grammar(tools: Sequence[Tool], choice: str, parallel: bool = True) -> Grammar | None:
    """The grammar of a reply under these tools: text or calls ("auto"), calls only
    ("required", a name); None when the reply is free ("none", or no tools)."""
    if not tools or choice == "none":
        return None
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


def parse_reply(text: str) -> tuple[str, list[ToolCall]]:
    """A reply made under ``tool_grammar``: (its text, "" when it calls tools; its calls)."""
    if not text.startswith("{"):
        return text, []
    try:
        value = json.loads(text)
        calls = [ToolCall(c["name"], dict(c["arguments"])) for c in value["tool_calls"]]
    except (ValueError, KeyError, TypeError):
        return text, []  # cut short by its budget, or a grammar that allows other JSON
    return "", calls


def plan_chat(messages: Sequence[Mapping[str, Any]], tools: Any, choice: Any, parallel: bool,
              fmt: Any, names_by_id: Mapping[str, str] | None = None
              ) -> tuple[list[dict[str, str]], Any]:
    """A chat request with tools as the engine runs it: the messages as plain turns and the
    format of the reply (the tool grammar, or ``fmt`` without tools)."""
    parsed = parse_tools(tools)
    mode = parse_choice(choice, parsed)
    if parsed and mode != "none" and fmt is not None:
        raise ToolError("a reply follows either a format or the tools: give one of them",
                        "response_format")
    if not isinstance(parallel, bool):
        raise ToolError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    rendered = render_messages(messages, parsed, mode, names_by_id)
    grammar = tool_grammar(parsed, mode, parallel)
    return rendered, grammar if grammar is not None else fmt


class CallFilter:
    """A reply made under a tool grammar, as a server streams it: text pieces pass as they
    come unless the reply opens with "{" (a call; plain text cannot), whose JSON is held back
    and given as calls at the end. Inactive (no tools), everything passes."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self._calling: bool | None = None

    def piece(self, text: str, make: Callable[[str], T]) -> T | None:
        """``make(text)``, or None for a piece of a call."""
        if self.active and self._calling is None and text:
            self._calling = text.startswith("{")
        return None if self._calling else make(text)

    def calls(self, text: str) -> list[ToolCall]:
        """The calls the whole reply ``text`` makes ([] for text, or without tools)."""
        return parse_reply(text)[1] if self.active else []
