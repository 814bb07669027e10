"""Gemma 4's native tool calls: the grammar that makes a reply one or more calls written in
Gemma 4's own syntax, arguments valid under each tool's JSON Schema, and the parser that reads
them back.

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

A call's arguments are a Gemma 4 object (``chat_gemma4.write_value``): keys bare, strings
between ``<|"|>`` tokens (unescaped: quotes, braces and newlines are plain text inside), numbers,
booleans and null as in JSON, objects ``{k:v,...}`` and arrays ``[a,b]`` without spaces.
``<|tool_call>``, ``<tool_call|>`` and ``<|"|>`` are single tokens of Gemma 4's vocabulary and
the grammar names them as tokens, so the model writes them as it was trained to (never spelled
out in characters), and string contents never contain the delimiter's text.

JSON Schema to Gemma 4 grammar, what is enforced: ``type`` (one or a list), ``enum``,
``const``, ``anyOf``/``oneOf`` (alternatives), ``allOf`` (merged), ``$ref`` to ``#/$defs/...``
or ``#/definitions/...`` (recursion allowed), OpenAPI's ``nullable``; strings' ``minLength``,
``maxLength``, ``pattern`` (a search, as JSON Schema means it, unless anchored with ``^``/``$``)
and the ``date``, ``time``, ``date-time``, ``uuid``, ``email`` and ``ipv4`` formats (other
formats are annotations); numbers through llguidance's own JSON number grammar (``minimum``,
``maximum``, exclusive bounds, ``multipleOf``); arrays' ``items``, ``prefixItems``,
``minItems``, ``maxItems``; objects' ``properties``, ``required`` and ``additionalProperties``
(absent or true: other keys may follow the declared ones, as JSON Schema allows). Properties are
written in the order Gemma 4's template lists them (its declarations and past calls sort keys as
Jinja's ``dictsort`` does), each optional one may be left out.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from pyengine.chat_gemma4 import CALL_CLOSE, CALL_OPEN, STR, _dictsort
from pyengine.structured.formats import STRICT_FORMATS, GrammarError, load_llguidance

# The delimiter token as the Lark grammar names it (a special token, not text).
_Q = '<|"|>'
# Text that holds no spelled-out delimiter: what a string's content may be.
_NO_DELIMITER = r'~/(?s:.*<\|"\|>.*)/'
_ANY_TEXT = "/(?s:.*)/"
# Keys the grammar lets a model invent (additional properties, objects of any shape).
_KEY = r"/[A-Za-z_][A-Za-z0-9_]*/"
FORMATS = {**{k: v[1:-1] for k, v in STRICT_FORMATS.items()},
           "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
           "email": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+",
           "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
                   r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"}
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_TYPES = ("string", "integer", "number", "boolean", "null", "array", "object")
# Characters a bare key cannot hold and still be read back.
_KEY_BREAKERS = set(":,{}[]") | {" ", "\n", "\t"}


class _Compiler:
    """Writes Lark rules for JSON Schemas, values in Gemma 4's syntax."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self._count = 0
        self._refs: dict[str, str] = {}
        self._root: Mapping[str, Any] = {}
        self._any: str | None = None

    def rule(self, body: str, name: str | None = None) -> str:
        name = name or self.fresh()
        self.rules.append(f"{name}: {body}")
        return name

    def fresh(self) -> str:
        self._count += 1
        return f"g4_{self._count}"

    # -- entry points -----------------------------------------------------------------------

    def arguments(self, schema: Any) -> str:
        """The rule of a tool's arguments: an object under ``schema``."""
        # $refs point into this tool's schema: names of another tool's definitions may repeat.
        self._root = schema if isinstance(schema, Mapping) else {}
        self._refs = {}
        if schema is True or schema is None or schema == {}:
            schema = {"type": "object"}
        if not isinstance(schema, Mapping):
            raise GrammarError("a tool's parameters must be a JSON Schema object")
        kinds = _kinds(schema)
        if kinds is not None and "object" not in kinds:
            raise GrammarError("a tool's parameters must be an object schema")
        return self.object(dict(schema))

    # -- values -----------------------------------------------------------------------------

    def value(self, schema: Any) -> str:
        """A rule (or an expression) for any value valid under ``schema``."""
        if schema is True or schema is None:
            return self.any_value()
        if schema is False:
            raise GrammarError("a schema of false allows no value")
        if not isinstance(schema, Mapping):
            raise GrammarError(f"a JSON Schema must be an object or a boolean, got {schema!r}")
        if "$ref" in schema:
            return self.ref(schema)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, part)
            return self.value(merged)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                base = {k: v for k, v in schema.items() if k != key}
                branches = [self.value(_merge(base, b)) for b in schema[key]]
                if not branches:
                    raise GrammarError(f"{key} needs at least one schema")
                return self.rule(" | ".join(branches))
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError("enum must be a non-empty list")
            return self.rule(" | ".join(literal(v) for v in values))
        kinds = _kinds(schema)
        if kinds is None:
            kinds = _implied_kinds(schema)
        alternatives = [self.typed(k, schema) for k in kinds]
        if schema.get("nullable") is True and "null" not in kinds:
            alternatives.append('"null"')
        return alternatives[0] if len(alternatives) == 1 else self.rule(" | ".join(alternatives))

    def typed(self, kind: str, schema: Mapping[str, Any]) -> str:
        if kind == "string":
            return self.string(schema)
        if kind in ("integer", "number"):
            numeric = {k: schema[k] for k in _NUMBER_KEYS if k in schema}
            return self.rule("%json " + json.dumps({"type": kind, **numeric}))
        if kind == "boolean":
            return '("true" | "false")'
        if kind == "null":
            return '"null"'
        if kind == "array":
            return self.array(schema)
        if kind == "object":
            return self.object(schema)
        raise GrammarError(f"unknown JSON Schema type {kind!r}")

    def any_value(self) -> str:
        """Any Gemma 4 value (a schema that says nothing)."""
        if self._any is None:
            self._any = name = self.fresh()
            text = self.string({})
            obj = self.rule(f'"{{" ({_KEY} ":" {name} ("," {_KEY} ":" {name})*)? "}}"')
            arr = self.rule(f'"[" ({name} ("," {name})*)? "]"')
            number = self.rule('%json {"type": "number"}')
            self.rule(f'{text} | {number} | "true" | "false" | "null" | {obj} | {arr}', name)
        return self._any

    def string(self, schema: Mapping[str, Any]) -> str:
        """``<|"|>content<|"|>``: content matching the schema's length, pattern and format,
        never holding the delimiter's text."""
        parts = [_ANY_TEXT, _NO_DELIMITER]
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if lo or hi is not None:
            parts.append(f"/(?s:.){{{int(lo)},{'' if hi is None else int(hi)}}}/")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            parts.append("/" + _search(pattern) + "/")
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in FORMATS and not isinstance(pattern, str):
            parts.append("/" + _ascii(FORMATS[fmt]) + "/")
        lexeme = self.fresh().upper()
        self.rules.append(f"{lexeme}: " + " & ".join(parts))
        return f"({_Q} {lexeme} {_Q})"

    def array(self, schema: Mapping[str, Any]) -> str:
        """``[a,b,...]``: element k follows the k-th ``prefixItems`` schema, then ``items``;
        between ``minItems`` and ``maxItems`` elements."""
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4-7 tuples
            prefix, items = items, schema.get("additionalItems", True)
        slots = [self.value(s) for s in prefix]
        rest = None if items is False else self.value(items)
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        n_max = None if hi is None else int(hi)
        if rest is None:
            n_max = len(slots) if n_max is None else min(n_max, len(slots))
        if n_max is not None and lo > n_max:
            raise GrammarError("the array's schema allows no value (minItems, maxItems)")
        if n_max == 0:
            return '("[" "]")'

        def tail(k: int) -> str:
            # The elements after the first k (each opening with ","), at least lo - k of them.
            if n_max is not None and k >= n_max:
                return ""
            if k >= len(slots):  # the items schema repeats from here
                need = max(lo - k, 0)
                if n_max is None:
                    return f'("," {rest}){{{need},}}' if need else f'("," {rest})*'
                return f'("," {rest}){{{need},{n_max - k}}}'
            inner = f'"," {slots[k]} {tail(k + 1)}'.rstrip()
            return inner if k < lo else f"({inner})?"

        body = f"{slots[0] if slots else rest} {tail(1)}".rstrip()
        return self.rule(f'"[" {body} "]"' if lo > 0 else f'"[" ({body})? "]"')

    def object(self, schema: Mapping[str, Any]) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise GrammarError("properties must be an object")
        required = schema.get("required") or []
        if not isinstance(required, list):
            raise GrammarError("required must be a list")
        props = dict(props)
        for name in required:  # a required key the properties do not describe takes anything
            props.setdefault(name, True)
        extra = schema.get("additionalProperties", True)
        members = []
        for name, sub in _dictsort(props):
            if not isinstance(name, str) or not name or set(name) & _KEY_BREAKERS \
                    or STR in name:
                raise GrammarError(f"the property name {name!r} cannot be a Gemma 4 key")
            members.append((f"{_literal_text(name + ':')} {self.value(sub)}",
                            name in required))
        more = None
        if extra is not False:
            key = _KEY
            if props:  # other keys: any but the declared ones
                names = "|".join(re.escape(n) for n in props)
                key = self.fresh().upper()
                self.rules.append(f"{key}: {_KEY} & ~/({names})/")
            more = f'{key} ":" {self.value(extra)}'
        # "Later" members open with ","; the first member written opens with nothing.
        later = [(f'"," {m}' if req else f'("," {m})?') for m, req in members]
        if more is not None:
            later.append(f'("," {more})*')
        first: tuple[str, bool] = (f"({more} (\",\" {more})*)?", True) if more is not None \
            else ("", True)  # (expression, nullable) of the members from the end on
        for k in range(len(members) - 1, -1, -1):
            member, req = members[k]
            written = f"{member} {' '.join(later[k + 1:])}".strip()
            if req:
                first = (written, False)
            else:
                expr, nullable = first
                if not expr:
                    first = (f"({written})?", True)
                elif nullable:
                    first = (f"({written} | {expr})", True)
                else:
                    first = (f"({written} | {expr})", False)
        return self.rule(f'"{{" {first[0]} "}}"'.replace("  ", " "))

    # -- references -------------------------------------------------------------------------

    def ref(self, schema: Mapping[str, Any]) -> str:
        ref = schema["$ref"]
        if ref not in self._refs:
            target = self._lookup(ref)
            name = self._refs[ref] = self.fresh()
            body = self.value(target)
            self.rule(body, name)
        return self._refs[ref]

    def _lookup(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise GrammarError(f"only local $refs (#/...) are supported, got {ref!r}")
        node: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise GrammarError(f"$ref {ref!r} points at nothing")
            node = node[part]
        return node


def _kinds(schema: Mapping[str, Any]) -> list[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    kinds = [kind] if isinstance(kind, str) else list(kind)
    for k in kinds:
        if k not in _TYPES:
            raise GrammarError(f"unknown JSON Schema type {k!r}")
    if not kinds:
        raise GrammarError("type must name at least one type")
    return kinds


def _implied_kinds(schema: Mapping[str, Any]) -> list[str]:
    # No type: what the other keywords imply, else anything.
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return ["object"]
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return ["array"]
    if any(k in schema for k in ("pattern", "minLength", "maxLength", "format")):
        return ["string"]
    if any(k in schema for k in _NUMBER_KEYS):
        return ["number"]
    return list(_TYPES)


def _merge(a: Mapping[str, Any], b: Any) -> dict[str, Any]:
    """Two schemas as one (for allOf, and for the keywords beside an anyOf): properties
    united, required united, the other keywords of ``b`` win."""
    if b is True or b is None:
        return dict(a)
    if not isinstance(b, Mapping):
        raise GrammarError("allOf, anyOf and oneOf must hold schemas")
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out


def _ascii(regex: str) -> str:
    # \d and \w as JSON Schema means them (ASCII only), "/" escaped for Lark's /.../.
    try:
        return load_llguidance().regex_to_lark(regex, "dw")
    except (ValueError, RuntimeError) as e:
        raise GrammarError(f"invalid pattern {regex!r}: {e}") from None


def _search(pattern: str) -> str:
    """A JSON Schema pattern (a search unless anchored) as a whole-content regex."""
    head = pattern.startswith("^")
    tail = pattern.endswith("$") and not pattern.endswith("\\$")
    core = _ascii(pattern[1 if head else 0: len(pattern) - 1 if tail else len(pattern)])
    return f"{'' if head else '(?s:.*)'}(?:{core}){'' if tail else '(?s:.*)'}"


def _literal_text(text: str) -> str:
    # A Lark string literal of plain text.
    return json.dumps(text, ensure_ascii=False)


def literal(value: Any) -> str:
    """The grammar of exactly ``value`` written in Gemma 4's syntax (consts and enums)."""
    if isinstance(value, str):
        if STR in value:
            raise GrammarError(f"the value {value!r} holds Gemma 4's string delimiter")
        return f"({_Q} {_literal_text(value)} {_Q})" if value else f"({_Q} {_Q})"
    if isinstance(value, bool):
        return '"true"' if value else '"false"'
    if value is None:
        return '"null"'
    if isinstance(value, (int, float)):
        return _literal_text(str(value))
    if isinstance(value, list):
        inner = ' "," '.join(literal(v) for v in value)
        return f'("[" {inner} "]")'
    if isinstance(value, Mapping):
        inner = ' "," '.join(f"{_literal_text(str(k) + ':')} {literal(v)}"
                             for k, v in _dictsort(value))
        return f'("{{" {inner} "}}")'
    raise GrammarError(f"cannot write {value!r} in Gemma 4's syntax")


def calls_grammar(tools: Sequence[tuple[str, Any]], parallel: bool, text: bool) -> str:
    """The Lark grammar of a reply that calls ``tools`` ((name, parameters schema) pairs):
    one call, or one or more with ``parallel``; with ``text`` the reply may instead be plain
    text (which cannot hold ``<|tool_call>``, a token no text spells)."""
    if not tools:
        raise GrammarError("a tool grammar needs at least one tool")
    c = _Compiler()
    choices = []
    for name, parameters in tools:
        args = c.arguments(parameters)
        choices.append(f"{_literal_text('call:' + name)} {args}")
    c.rule(f"{CALL_OPEN} ({' | '.join(choices)}) {CALL_CLOSE}", "call")
    calls = "call+" if parallel else "call"
    # Text never starts with the opener spelled out either, so a reply that starts with it is
    # a call (what CallFilter and parse_reply go by).
    head = [f"start: {calls} | TEXT", r"TEXT: /[\s\S]+/ & ~/<\|tool_call>[\s\S]*/"] \
        if text else [f"start: {calls}"]
    return "\n".join(head + c.rules) + "\n"


# -- reading calls back ---------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SPACE = " \t\r\n"


class ParseError(ValueError):
    """Text that is not Gemma 4 calls (or values)."""


def parse_value(text: str, pos: int = 0) -> tuple[Any, int]:
    """The Gemma 4 value at ``text[pos:]`` and the position after it (``ParseError`` if none).
    White space between parts is allowed, as llama.cpp's parser allows it."""
    pos = _skip(text, pos)
    if text.startswith(STR, pos):
        end = text.find(STR, pos + len(STR))
        if end < 0:
            raise ParseError(f"unterminated string at {pos}")
        return text[pos + len(STR):end], end + len(STR)
    if text.startswith("{", pos):
        return _parse_object(text, pos + 1)
    if text.startswith("[", pos):
        out: list[Any] = []
        pos = _skip(text, pos + 1)
        if text.startswith("]", pos):
            return out, pos + 1
        while True:
            value, pos = parse_value(text, pos)
            out.append(value)
            pos = _skip(text, pos)
            if text.startswith(",", pos):
                pos += 1
            elif text.startswith("]", pos):
                return out, pos + 1
            else:
                raise ParseError(f"expected ',' or ']' at {pos}")
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, pos):
            return value, pos + len(word)
    m = _NUMBER.match(text, pos)
    if m:
        number = m.group(0)
        return (float(number) if m.group(1) or m.group(2) else int(number)), m.end()
    raise ParseError(f"no value at {pos}")


def _parse_object(text: str, pos: int) -> tuple[dict[str, Any], int]:
    # After "{": key:value pairs, keys bare (or between delimiters), up to "}".
    out: dict[str, Any] = {}
    pos = _skip(text, pos)
    if text.startswith("}", pos):
        return out, pos + 1
    while True:
        pos = _skip(text, pos)
        if text.startswith(STR, pos):
            key, pos = parse_value(text, pos)
        else:
            end = text.find(":", pos)
            key = text[pos:end].strip() if end > pos else ""
            if not key or set(key) & set(",{}[]"):
                raise ParseError(f"no key at {pos}")
            pos = end
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise ParseError(f"expected ':' at {pos}")
        value, pos = parse_value(text, pos + 1)
        out[key] = value
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif text.startswith("}", pos):
            return out, pos + 1
        else:
            raise ParseError(f"expected ',' or '}}' at {pos}")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def parse_calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls a reply makes, ``<|tool_call>call:NAME{...}<tool_call|>`` one after the
    other: [(name, arguments)]. ``ParseError`` for anything else (text, a call cut short)."""
    calls = []
    pos = _skip(text, 0)
    if not text.startswith(CALL_OPEN, pos):
        raise ParseError("not a tool call")
    while text.startswith(CALL_OPEN, pos):
        pos += len(CALL_OPEN)
        if not text.startswith("call:", pos):
            raise ParseError(f"expected 'call:' at {pos}")
        brace = text.find("{", pos)
        name = text[pos + len("call:"):brace].strip() if brace >= 0 else ""
        if not name:
            raise ParseError(f"no tool name at {pos}")
        args, pos = _parse_object(text, brace + 1)
        pos = _skip(text, pos)
        if not text.startswith(CALL_CLOSE, pos):
            raise ParseError(f"expected {CALL_CLOSE} at {pos}")
        pos = _skip(text, pos + len(CALL_CLOSE))
        calls.append((name, args))
    if pos != len(text):
        raise ParseError(f"text after the calls at {pos}")
    return calls
