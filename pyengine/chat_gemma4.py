"""Gemma 4's chat format, rendered as Google's chat template for Gemma 4 renders it (the
31B-it template llama.cpp ships in ``models/templates``), for the roles Ollama's Gemma 4
renderer takes: system (or developer) first, user, assistant (or model) with or without tool
calls, and tool results.

    <|turn>system\\n{system}<|tool>declaration:NAME{...}<tool|><turn|>\\n
    <|turn>user\\n{content}<turn|>\\n
    <|turn>model\\n<|tool_call>call:NAME{city:<|"|>Paris<|"|>}<tool_call|>
    <|tool_response>response:NAME{value:<|"|>18 C<|"|>}<tool_response|>{answer}<turn|>\\n
    <|turn>model\\n<|channel>thought\\n<channel|>

Gemma 4 has a system role; tools are declared in the system turn; an assistant's tool calls,
the tool results that follow them and the assistant's next message share one model turn
(which is why a prompt ending in tool results has no generation prompt: the model goes on in
that turn). With thinking off (always, here) the generation prompt carries an empty thought
block, so the model answers at once.

Values (tool-call arguments, tool results, enums in declarations) are written in Gemma 4's own
syntax (``write_value``): strings between ``<|"|>`` tokens, unescaped; numbers, booleans and
null bare; objects ``{key:value,...}`` with keys sorted as Jinja's ``dictsort`` sorts them.

Where this differs from the template, on purpose: ``None`` is written ``null`` (the 31B
template prints Python's ``None``; Google's later templates and llama.cpp's parser use
``null``); arguments given as a JSON string are parsed and written as values (the template
pastes the string); a tool result's tool is found by its call id, else its ``tool_name`` or
``name``, else by position among the calls (the template compares ids even when both are
missing, which names every result after the last call). No BOS is written: the tokenizer adds
it (llama.cpp forces ``add_bos`` for Gemma 4).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

# Gemma 4's markup (its tokenizer has one token for each).
STR = '<|"|>'
TURN_OPEN, TURN_CLOSE = "<|turn>", "<turn|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<|tool_response>", "<tool_response|>"
TOOL_OPEN, TOOL_CLOSE = "<|tool>", "<tool|>"
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
THINK = "<|think|>"
EMPTY_THOUGHT = f"{CHANNEL_OPEN}thought\n{CHANNEL_CLOSE}"

_ROLES = {"system", "developer", "user", "assistant", "model", "tool"}
# Schema keys the template's parameter writer skips when it lists an object's properties.
_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")
_MISSING = object()  # a key the mapping does not have (Jinja's Undefined)


def _dictsort(mapping: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """Items in Jinja's ``dictsort`` order: by key, case-insensitively, ties in dict order."""
    return sorted(mapping.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str)
                  else kv[0])


def write_value(value: Any, escape_keys: bool = False) -> str:
    """A value in Gemma 4's syntax (the template's ``format_argument``): strings between
    ``<|"|>``, booleans ``true``/``false``, None ``null``, numbers as Python prints them,
    lists ``[a,b]``, mappings ``{key:value}`` sorted by key (keys between ``<|"|>`` too with
    ``escape_keys``, as tool declarations write enums and nested schemas)."""
    if isinstance(value, str):
        return STR + value + STR
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join((STR + str(k) + STR if escape_keys else str(k)) + ":"
                              + write_value(v, escape_keys) for k, v in _dictsort(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(write_value(v, escape_keys) for v in value) + "]"
    return str(value)


def _get(value: Any, key: str) -> Any:
    # value[key] as Jinja reads it: anything that is not a mapping has no keys.
    return value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING


def _truthy(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _upper(value: Any) -> str:
    # Jinja's ``| upper``: the text of any value (a list of types prints as a Python list).
    return "" if value is _MISSING else str(value).upper()


def _names(items: Any) -> str:
    return ",".join(STR + str(item) + STR for item in items)


def _items(items: Mapping[str, Any]) -> str:
    """An array property's ``items`` schema, field by field in key order."""
    parts = []
    for key, value in _dictsort(items):
        if value is None:
            continue
        if key == "properties":
            parts.append("properties:{" + (_parameters(value) if isinstance(value, Mapping)
                                           else "") + "}")
        elif key == "required":
            parts.append(f"required:[{_names(value)}]")
        elif key == "type":
            types = value.upper() if isinstance(value, str) else [str(t).upper() for t in value]
            parts.append("type:" + write_value(types, escape_keys=True))
        else:
            parts.append(f"{key}:" + write_value(value, escape_keys=True))
    return ",".join(parts)


def _parameters(properties: Mapping[str, Any]) -> str:
    """The template's ``format_parameters``: each property (standard schema keys skipped) as
    ``name:{description,enum|items,nullable,properties,required,type}``."""
    out = []
    for key, value in _dictsort(properties):
        if key in _STANDARD_KEYS:
            continue
        fields = []
        description = _get(value, "description")
        if _truthy(description):
            fields.append(f"description:{STR}{description}{STR}")
        kind = _upper(_get(value, "type"))
        if kind == "STRING":
            enum = _get(value, "enum")
            if _truthy(enum):
                fields.append("enum:" + write_value(enum, escape_keys=True))
        elif kind == "ARRAY":
            items = _get(value, "items")
            if isinstance(items, Mapping) and items:
                fields.append("items:{" + _items(items) + "}")
        if _truthy(_get(value, "nullable")):
            fields.append("nullable:true")
        if kind == "OBJECT":
            props = _get(value, "properties")
            if isinstance(props, Mapping):
                fields.append("properties:{" + _parameters(props) + "}")
            elif isinstance(value, Mapping):  # properties written inline, as some clients do
                fields.append("properties:{" + _parameters(value) + "}")
            required = _get(value, "required")
            if _truthy(required):
                fields.append(f"required:[{_names(required)}]")
        fields.append(f"type:{STR}{kind}{STR}")
        out.append(f"{key}:{{" + ",".join(fields) + "}")
    return ",".join(out)


def declare_tool(tool: Mapping[str, Any]) -> str:
    """One tool of a request (``{"type": "function", "function": {...}}``) as the system turn
    declares it: ``<|tool>declaration:NAME{description:...,parameters:{...}}<tool|>``.

    As in the template, a parameters object without ``type`` leaves its brace open."""
    f = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
        raise ValueError('tools must be {"type": "function", "function": {"name": ...}} objects')
    description = "" if f.get("description") is None else f["description"]
    out = f"declaration:{f['name']}{{description:{STR}{description}{STR}"
    params = f.get("parameters")
    if params:
        out += ",parameters:{"
        if _truthy(_get(params, "properties")):
            out += "properties:{" + _parameters(params["properties"]) + "},"
        if _truthy(_get(params, "required")):
            out += f"required:[{_names(params['required'])}],"
        if _truthy(_get(params, "type")):
            out += f"type:{STR}{str(params['type']).upper()}{STR}}}"
    if "response" in f:
        response = f["response"]
        out += ",response:{"
        if _truthy(_get(response, "description")):
            out += f"description:{STR}{response['description']}{STR},"
        if _upper(_get(response, "type")) == "OBJECT":
            out += f"type:{STR}OBJECT{STR}}}"
    return TOOL_OPEN + (out + "}").strip() + TOOL_CLOSE


def strip_thinking(text: str) -> str:
    """A model message without its ``<|channel>...<channel|>`` blocks, trimmed."""
    out = []
    for part in text.split(CHANNEL_CLOSE):
        out.append(part.split(CHANNEL_OPEN)[0] if CHANNEL_OPEN in part else part)
    return "".join(out).strip()


def _text(i: int, content: Any, model: bool) -> str:
    """A message's content as its turn holds it: a model's without thought blocks, anyone
    else's trimmed; text parts one after the other."""
    if content is None:
        return ""
    if isinstance(content, str):
        return strip_thinking(content) if model else content.strip()
    if isinstance(content, Sequence):
        out = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ValueError(f'message {i} content parts must be {{"type": "text", '
                                 '"text": "..."}')
            out.append(strip_thinking(part["text"]) if model else part["text"].strip())
        return "".join(out)
    raise ValueError(f"message {i} content must be a string")


def _arguments(i: int, call: Any) -> tuple[str, Any]:
    f = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
        raise ValueError(f'message {i} tool_calls must hold {{"function": {{"name": ..., '
                         '"arguments": ...}} objects')
    args = f.get("arguments")
    if isinstance(args, str):  # OpenAI's clients send the arguments as JSON text
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise ValueError(f"message {i} tool call arguments must be JSON") from None
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ValueError(f"message {i} tool call arguments must be an object")
    return f["name"], args


def _call(name: str, args: Mapping[str, Any]) -> str:
    body = ",".join(f"{k}:{write_value(v)}" for k, v in _dictsort(args))
    return f"{CALL_OPEN}call:{name}{{{body}}}{CALL_CLOSE}"


def _response(name: str, content: Any) -> str:
    if isinstance(content, Mapping):
        body = ",".join(f"{k}:{write_value(v)}" for k, v in _dictsort(content))
    else:
        body = "value:" + write_value(content)
    return f"{RESPONSE_OPEN}response:{name}{{{body}}}{RESPONSE_CLOSE}"


def _tool_name(result: Mapping[str, Any], calls: Sequence[Any], k: int) -> str:
    """The tool a result answers: its call's (by id), its own name, the k-th call's."""
    call_id = result.get("tool_call_id")
    if call_id:
        for c in calls:
            if isinstance(c, Mapping) and c.get("id") == call_id:
                return c["function"]["name"]
    name = result.get("tool_name") or result.get("name")
    if isinstance(name, str) and name:
        return name
    if k < len(calls):
        return calls[k]["function"]["name"]
    return "unknown"


def _result_content(i: int, content: Any) -> Any:
    # A tool result's content as the template writes it: text as is (not trimmed), the text
    # of text parts joined, an object as an object.
    if content is None or isinstance(content, (str, Mapping)):
        return "" if content is None else content
    if isinstance(content, Sequence):
        return "".join(p.get("text") or "" for p in content
                       if isinstance(p, Mapping) and p.get("type") == "text")
    raise ValueError(f"message {i} content must be a string")


def format_gemma4(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
                  | None = None, add_generation_prompt: bool = True,
                  enable_thinking: bool = False) -> str:
    """Renders Ollama- or OpenAI-style chat messages in Gemma 4's turn format (see the module).

    ``tools``: the request's tools (``{"type": "function", "function": {...}}``), declared in
    the system turn. Assistant messages may carry ``tool_calls`` (arguments as an object or
    JSON text); ``tool`` messages answer the calls of the assistant message before them.
    ``enable_thinking`` asks for a thought first (``<|think|>`` in the system turn).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role', 'content'} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"message {i} is not an object")
        if msg.get("role") not in _ROLES:
            raise ValueError(f"message {i} has unknown role {msg.get('role')!r}")
    out: list[str] = []
    loop = list(messages)
    prev = None  # what the prompt ended with: "tool_call", "tool_response" or other
    first_is_system = bool(loop) and loop[0].get("role") in ("system", "developer")
    if enable_thinking or tools or first_is_system:
        out.append(f"{TURN_OPEN}system\n")
        if enable_thinking:
            out.append(f"{THINK}\n")
        if first_is_system:
            out.append(_text(0, loop[0].get("content"), False))
            loop = loop[1:]
        for tool in tools or ():
            out.append(declare_tool(tool))
        out.append(f"{TURN_CLOSE}\n")
    offset = len(messages) - len(loop)  # for the messages' numbers in errors
    last_user = max((j for j, m in enumerate(loop) if m.get("role") == "user"), default=-1)
    prev_role = None  # the role of the last message that was not a tool result
    for j, msg in enumerate(loop):
        i = j + offset
        role = msg["role"]
        if role == "tool":
            continue  # rendered with the calls it answers (or, answering none, left out)
        prev = None
        turn = "model" if role == "assistant" else role
        # An assistant message right after another (tool results between) goes on in its turn.
        if not (turn == "model" and prev_role == "assistant"):
            out.append(f"{TURN_OPEN}{turn}\n")
        calls = msg.get("tool_calls") or []
        if calls and not isinstance(calls, Sequence):
            raise ValueError(f"message {i} tool_calls must be a list")
        thought = msg.get("thinking") or msg.get("reasoning") or msg.get("reasoning_content")
        if thought and j > last_user and calls:
            out.append(f"{CHANNEL_OPEN}thought\n{thought}\n{CHANNEL_CLOSE}")
        for call in calls:
            out.append(_call(*_arguments(i, call)))
        if calls:
            prev = "tool_call"
        answered = False
        if calls:
            named = [{"id": c.get("id"), "function": {"name": _arguments(i, c)[0]}}
                     for c in calls]
            for k, result in enumerate(_results(loop, j)):
                name = _tool_name(result, named, k)
                out.append(_response(name, _result_content(i, result.get("content"))))
                answered = True
                prev = "tool_response"
        content = msg.get("content")
        out.append(_text(i, content, turn == "model"))
        if prev == "tool_call" and not answered:
            out.append(RESPONSE_OPEN)  # the prompt asks for the tool's result
        elif not (answered and not content):
            out.append(f"{TURN_CLOSE}\n")
        prev_role = role
    if add_generation_prompt and prev not in ("tool_response", "tool_call"):
        out.append(f"{TURN_OPEN}model\n")
        if not enable_thinking:
            out.append(EMPTY_THOUGHT)
    return "".join(out)


def _results(loop: Sequence[Mapping[str, Any]], j: int) -> list[Mapping[str, Any]]:
    """The tool messages right after message ``j``."""
    out = []
    for msg in loop[j + 1:]:
        if msg.get("role") != "tool":
            break
        out.append(msg)
    return out
