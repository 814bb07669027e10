"""Gemma 4's native tool calls: the grammar that constrains a reply to
``<|tool_call>call:NAME{...}<tool_call|>`` with arguments valid under each tool's JSON Schema,
the parser that reads calls back, and the request planning that picks them by architecture.

The grammars are checked with llguidance directly over a small vocabulary built here: the
256 bytes, a few longer pieces that cross the grammar's boundaries (``},``, ``:[``, ...) and
Gemma 4's markup as special tokens, as the engine hands Gemma 4's vocabulary to llguidance (a
special token is never text, so the grammar must name it as a token). Where the pinned
llama.cpp source is unpacked, the same checks run over Gemma 4's real vocabulary too.
"""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest
from json_schemas import obj

from pyengine.chat import format_gemma
from pyengine.chat_gemma4 import format_gemma4, write_value
from pyengine.structured import Grammar, GrammarError, ToolError
from pyengine.structured.formats import grammar_text, load_llguidance
from pyengine.structured.gemma4_calls import ParseError, calls_grammar, parse_calls, parse_value
from pyengine.structured.solver import Grammars
from pyengine.structured.tools import (
    CallFilter,
    ToolCall,
    parse_reply,
    parse_tools,
    plan_chat,
    plan_prompt,
    tool_grammar,
)

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
Q = '<|"|>'
MARKUP = ["<eos>", "<|tool_call>", "<tool_call|>", Q, "<|tool_response>", "<turn|>"]
EOG = [0, 4, 5]  # <eos>, <|tool_response>, <turn|>: Gemma 4's ends of generation
PIECES = ["call:", "},", "}", ":[", "],", "true", "false", "null", "12", "ab", "Paris", ", ",
          '"}', "{\n", "get_", "weather", "city:", "<|", "|>"]


class ToyCore:
    """What ``structured.solver.Grammars`` reads of an engine: its vocabulary (Gemma 4's
    markup as special tokens, the bytes, longer pieces) and its tokenizer."""

    def __init__(self) -> None:
        self.pieces = [(m.encode(), True) for m in MARKUP] + [(bytes([b]), False)
                                                               for b in range(256)]
        self.pieces += [(p.encode(), False) for p in PIECES]
        self.pieces.append((b"", True))  # an unused token: special, with no text
        self.eos_id, self.bos_id, self.eog_ids = 0, -1, EOG
        self._text = {p: i for i, (p, special) in enumerate(self.pieces) if not special}

    def token_pieces(self) -> list[tuple[bytes, bool]]:
        return self.pieces

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Markup as its tokens, the rest greedily by the longest piece."""
        out, data, i = [], text.encode(), 0
        while i < len(data):
            for k, m in enumerate(MARKUP):
                if data.startswith(m.encode(), i):
                    out.append(k)
                    i += len(m.encode())
                    break
            else:
                n = max(n for n in range(1, 17) if data[i:i + n] in self._text)
                out.append(self._text[data[i:i + n]])
                i += n
        return out

    def spelled(self, text: str) -> list[int]:
        """``text`` in byte tokens only: the markup spelled out in characters."""
        return [len(MARKUP) + b for b in text.encode()]

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i][0] for i in ids).decode()


@pytest.fixture(scope="module")
def core() -> ToyCore:
    return ToyCore()


@pytest.fixture(scope="module")
def grammars(core) -> Grammars:
    return Grammars(core)


def accepts(grammars: Grammars, grammar: str, ids: list[int]) -> bool:
    """Whether the grammar takes exactly these tokens and may end after them."""
    m = grammars.matcher(Grammar(grammar))
    return m.validate_tokens(ids) == len(ids) and m.consume_tokens(ids) and m.is_accepting()


def render_call(name: str, args: dict) -> str:
    """A call as Gemma 4 writes it (its chat template's syntax)."""
    return f"<|tool_call>call:{name}{write_value(args)}<tool_call|>"


WEATHER = {"type": "object", "required": ["city"], "additionalProperties": False,
           "properties": {"city": {"type": "string", "maxLength": 40},
                          "unit": {"enum": ["C", "F"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7},
                          "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                          "opts": {"type": "object", "additionalProperties": False,
                                   "required": ["deep"],
                                   "properties": {"deep": {"type": "boolean"},
                                                  "ratio": {"type": ["number", "null"]}}}}}
PING = {"type": "object", "properties": {}, "additionalProperties": False}


@pytest.fixture(scope="module")
def weather(grammars):
    text = calls_grammar([("get_weather", WEATHER), ("ping", PING)], parallel=True, text=True)
    grammar_text(Grammar(text))  # llguidance compiles it
    return text


@pytest.mark.parametrize("reply", [
    render_call("get_weather", {"city": "Paris"}),
    render_call("get_weather", {"city": 'a "quoted" {brace} [x], y:z\nnext line'}),
    render_call("get_weather", {"city": "", "days": 7, "unit": "F"}),
    render_call("get_weather", {"city": "Oslo", "tags": ["a", "b"],
                                "opts": {"deep": False, "ratio": -1.5e3}}),
    render_call("get_weather", {"city": "Oslo", "opts": {"deep": True, "ratio": None}}),
    render_call("ping", {}),
    render_call("get_weather", {"city": "Paris"}) + render_call("ping", {}),  # parallel
    "Plain text, not a call.",
    "{ looks like JSON but is text }",
])
def test_valid_replies_are_accepted(grammars, core, weather, reply):
    assert accepts(grammars, weather, core.tokenize(reply)), reply


@pytest.mark.parametrize("reply", [
    render_call("get_weather", {}),                                  # city is required
    render_call("get_weather", {"city": 3}),                         # a number, not a string
    render_call("get_weather", {"city": "P", "days": 8}),            # above its maximum
    render_call("get_weather", {"city": "P", "days": 2.5}),          # not an integer
    render_call("get_weather", {"city": "x" * 41}),                  # longer than maxLength
    render_call("get_weather", {"city": "P", "unit": "K"}),          # not in the enum
    render_call("get_weather", {"city": "P", "tags": ["a", "b", "c"]}),  # maxItems
    render_call("get_weather", {"city": "P", "wind": 1}),            # no such property
    render_call("get_weather", {"city": "P", "opts": {}}),           # deep is required
    render_call("get_weather", {"city": "P", "opts": {"deep": "yes"}}),
    render_call("get_time", {"zone": "CET"}),                        # no such tool
    render_call("get_weather", {"city": "P"})[:-len("<tool_call|>")],  # cut short
    "<|tool_call>call:get_weather{city:\"Paris\"}<tool_call|>",      # a JSON string
    '<|tool_call>call:get_weather{"city":' + Q + "P" + Q + "}<tool_call|>",  # a quoted key
    "<|tool_call>call:get_weather{ city:" + Q + "P" + Q + "}<tool_call|>",  # free white space
    "Text, then " + render_call("ping", {}),                         # text before a call
])
def test_invalid_replies_are_rejected(grammars, core, weather, reply):
    assert not accepts(grammars, weather, core.tokenize(reply)), reply


def test_the_markup_must_be_its_tokens(grammars, core, weather):
    """Spelled out in characters, the call's markup is text: a string cannot hold the
    delimiter's text, and text cannot start with the opener's, so such a reply is refused."""
    call = render_call("get_weather", {"city": "Paris"})
    assert accepts(grammars, weather, core.tokenize(call))
    assert not accepts(grammars, weather, core.spelled(call))
    inner = render_call("get_weather", {"city": "a" + Q + "b"})  # the delimiter inside
    ids = core.tokenize(inner)
    ids[ids.index(3, ids.index(3) + 1)] = -1  # the middle delimiter, spelled out instead
    k = ids.index(-1)
    ids[k:k + 1] = core.spelled(Q)
    assert not accepts(grammars, weather, ids)
    # Text may mention the markup, just not open with it.
    assert accepts(grammars, weather, core.spelled("Write <|tool_call> to call."))


def test_tool_choice_and_parallel_calls(grammars, core):
    one = calls_grammar([("ping", PING)], parallel=False, text=False)
    assert accepts(grammars, one, core.tokenize(render_call("ping", {})))
    assert not accepts(grammars, one, core.tokenize(render_call("ping", {}) * 2))
    assert not accepts(grammars, one, core.tokenize("text"))  # required: a call, never text
    tools = parse_tools([{"type": "function", "function": {"name": "get_weather",
                                                            "parameters": WEATHER}},
                         {"type": "function", "function": {"name": "ping", "parameters": PING}}])
    named = tool_grammar(tools, "ping", True, arch="gemma4")
    assert accepts(grammars, named.text, core.tokenize(render_call("ping", {})))
    assert not accepts(grammars, named.text,
                       core.tokenize(render_call("get_weather", {"city": "P"})))
    assert tool_grammar(tools, "none", True, arch="gemma4") is None
    # The Gemma 3 grammar is untouched: one JSON object of calls.
    assert "%json" in tool_grammar(tools, "auto", True).text
    assert "<|tool_call>" not in tool_grammar(tools, "auto", True).text


ANY_OR_WORD = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[a-z]+$"}]}
POINT = {"type": "object", "required": ["x"], "additionalProperties": False,
         "properties": {"x": {"type": "number"}}}
SCHEMA_FEATURES = {
    "const and anyOf": ({"type": "object", "additionalProperties": False,
                         "properties": {"k": {"const": "fixed"}, "v": ANY_OR_WORD}},
                        [{"k": "fixed", "v": 3}, {"v": "abc"}], [{"k": "other"}, {"v": "ABC"}]),
    "$ref and $defs": ({"type": "object", "$defs": {"pt": POINT}, "additionalProperties": False,
                        "properties": {"a": {"$ref": "#/$defs/pt"},
                                       "b": {"type": "array", "items": {"$ref": "#/$defs/pt"}}}},
                       [{"a": {"x": 1}, "b": [{"x": 2.5}, {"x": -3}]}], [{"a": {"y": 1}}]),
    "formats": ({"type": "object", "additionalProperties": False,
                 "properties": {"d": {"type": "string", "format": "date"},
                                "u": {"type": "string", "format": "uuid"}}},
                [{"d": "2024-02-29", "u": "123e4567-e89b-12d3-a456-426614174000"}],
                [{"d": "2023-02-29"}, {"u": "not-a-uuid"}]),
    "pattern is a search": ({"type": "object", "additionalProperties": False,
                             "properties": {"p": {"type": "string", "pattern": "ab+"}}},
                            [{"p": "xxabbbyy"}], [{"p": "xxayy"}]),
    "additional properties": ({"type": "object", "properties": {"a": {"type": "integer"}},
                               "additionalProperties": {"type": "boolean"}},
                              [{"a": 1, "z": True}, {"zz": False}], [{"z": 1}]),
    "tuples": ({"type": "object", "additionalProperties": False, "properties": {
        "t": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}],
              "items": False, "minItems": 1}}},
               [{"t": ["a"]}, {"t": ["a", True]}], [{"t": []}, {"t": ["a", True, 1]}]),
    "nested objects of any shape": ({"type": "object", "properties": {"o": {"type": "object"}},
                                     "additionalProperties": False},
                                    [{"o": {"deep": {"er": [1, "x", None, {"k": True}]}}}],
                                    [{"o": 1}]),
}


@pytest.mark.parametrize("schema, good, bad", SCHEMA_FEATURES.values(), ids=SCHEMA_FEATURES.keys())
def test_schema_features(grammars, core, schema, good, bad):
    grammar = calls_grammar([("f", schema)], parallel=False, text=False)
    for args in good:
        jsonschema.validate(args, schema, format_checker=CHECKER)  # the cases are right
        assert accepts(grammars, grammar, core.tokenize(render_call("f", args))), args
    for args in bad:
        assert not accepts(grammars, grammar, core.tokenize(render_call("f", args))), args


@pytest.mark.parametrize("schema, match", [
    ({"type": "object", "properties": {"a:b": {"type": "string"}}}, "cannot be a Gemma 4 key"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "points at nothing"),
    ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "unknown JSON Schema type"),
    ({"type": "string"}, "must be an object schema"),
    ({"type": "object", "properties": {"a": {"enum": ["x" + Q]}}}, "delimiter"),
])
def test_schemas_it_cannot_write_are_refused(schema, match):
    with pytest.raises(GrammarError, match=match):
        calls_grammar([("f", schema)], parallel=False, text=False)


# -- reading calls back ---------------------------------------------------------------------

ROUND_TRIPS = [
    {},
    {"city": "Paris"},
    {"s": 'quotes " and \' braces {} [] commas, colons: and\nnewlines\tand tabs'},
    {"s": "", "t": " padded ", "u": "unicodé ✓ 東京"},
    {"n": 0, "neg": -12, "f": 1.5, "e": 2.5e-07, "big": 12345678901234567890},
    {"yes": True, "no": False, "nothing": None},
    {"list": [1, "two", [3, [4]], {"five": 5}, None, True], "empty": [], "obj": {}},
    {"nested": {"Deep": {"deeper": {"a": [{"b": "c"}]}}}},
]


@pytest.mark.parametrize("args", ROUND_TRIPS)
def test_calls_round_trip(args):
    text = render_call("f", args)
    assert parse_calls(text) == [("f", args)]
    two = text + render_call("g.h-1", {"x": args})
    assert parse_calls(two) == [("f", args), ("g.h-1", {"x": args})]
    assert parse_reply(two, "gemma4") == ("", [ToolCall("f", args), ToolCall("g.h-1", {"x": args})])


def test_the_parser_takes_white_space_as_llama_cpp_does():
    text = "<|tool_call>call:f{ a: 1, b:[ 1 , 2 ], c:{ d:" + Q + "x" + Q + " } }<tool_call|>\n"
    assert parse_calls(text) == [("f", {"a": 1, "b": [1, 2], "c": {"d": "x"}})]
    assert parse_value(Q + "x" + Q)[0] == "x"


@pytest.mark.parametrize("text", [
    "plain text",
    "<|tool_call>call:f{a:1}",                        # cut short by its budget
    "<|tool_call>call:f{a:" + Q + "unterminated}<tool_call|>",
    "<|tool_call>call:f{a:1}<tool_call|> and then text",
    "<|tool_call>f{a:1}<tool_call|>",
    "<|tool_call>call:f{a:1,}<tool_call|>",
])
def test_what_is_not_calls_stays_text(text):
    if text.startswith("<|tool_call>"):
        with pytest.raises(ParseError):
            parse_calls(text)
    assert parse_reply(text, "gemma4") == (text, [])


def test_the_call_filter_holds_back_gemma4_calls():
    calling = CallFilter(True, "gemma4")
    call = render_call("f", {"a": 1})
    assert calling.piece("<|tool_call>", str) is None and calling.piece("call:f{a:1}", str) is None
    assert calling.calls(call) == [ToolCall("f", {"a": 1})]
    text = CallFilter(True, "gemma4")
    assert text.piece("Hello", str) == "Hello" and text.piece(" {x}", str) == " {x}"
    assert text.calls("Hello {x}") == []
    # Gemma 3's filter still goes by "{" (its calls are JSON).
    assert CallFilter(True).piece("{", str) is None
    assert CallFilter(True).piece("<|tool_call>", str) == "<|tool_call>"


def test_every_reply_the_grammar_allows_parses_and_validates(grammars, core):
    """The property: random schemas of the features agents use; for each, replies sampled at
    random from the grammar's masks (closing as the engine's closing policy does) always parse
    back into calls whose arguments validate against the schema."""
    rng = random.Random(4)
    sampled = 0
    for i in range(60):
        schema = obj(rng)
        grammar = Grammar(calls_grammar([("tool", schema)], parallel=False, text=False))
        m = grammars.matcher(grammar)
        ids: list[int] = []
        for step in range(400):
            if m.is_accepting():
                break
            if step >= 40:  # time to finish: the solver's closing policy
                token = grammars.closing_token(m, ids[-1] if ids else -1, 1)
            else:
                bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint32)
                allowed = [t for t in range(len(core.pieces))
                           if bits[t >> 5] >> (t & 31) & 1 and t not in EOG]
                token = rng.choice(allowed)
            assert m.consume_token(token), m.get_error()
            ids.append(token)
        assert m.is_accepting(), (schema, core.detokenize(ids))
        calls = parse_calls(core.detokenize(ids))
        assert [name for name, _ in calls] == ["tool"]
        try:
            jsonschema.validate(calls[0][1], schema, format_checker=CHECKER)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{json.dumps(schema)}\n{core.detokenize(ids)!r}") from e
        sampled += 1
    assert sampled == 60


def test_the_closing_policy_ends_a_gemma4_string(grammars, core):
    """Inside a Gemma 4 string '"', '}' and ']' are text: the way out is the delimiter token,
    which the closing policy now prefers (without it, no way out is found)."""
    grammar = Grammar(calls_grammar([("f", {"type": "object", "required": ["s"],
                                            "properties": {"s": {"type": "string"}}})],
                                    parallel=False, text=False))
    m = grammars.matcher(grammar)
    prefix = core.tokenize("<|tool_call>call:f{s:" + Q + 'so "far" {}')
    assert m.consume_tokens(prefix)
    assert grammars.closing_path_length(m) == 4  # <|"|> } <tool_call|> <end>


def test_only_the_delimiter_may_end_a_string(grammars, core):
    """Where a string's end delimiter may come next, no other token may pass as a special
    token's first byte: not one with no text (an unused token), not the byte 0xFF."""
    grammar = Grammar(calls_grammar([("f", {"type": "object", "required": ["s"],
                                            "properties": {"s": {"type": "string"}}})],
                                    parallel=False, text=False))
    m = grammars.matcher(grammar)
    assert m.consume_tokens(core.tokenize("<|tool_call>call:f{s:" + Q + "ab"))
    bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint32)
    allowed = [t for t in range(len(core.pieces)) if bits[t >> 5] >> (t & 31) & 1]
    assert [t for t in allowed if core.pieces[t][1] or core.pieces[t][0] == b"\xff"] == [3]
    assert len(allowed) > 100  # the string's text goes on


# -- planning a request by architecture ---------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather",
                                                 "description": "The weather in a city.",
                                                 "parameters": WEATHER}}
PING_TOOL = {"type": "function", "function": {"name": "ping", "parameters": PING}}
HISTORY = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": "", "tool_calls": [
               {"id": "call_1", "function": {"name": "get_weather",
                                             "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]


def test_gemma4_requests_declare_the_tools_and_write_calls_natively():
    text, fmt = plan_prompt(HISTORY, [WEATHER_TOOL, PING_TOOL], None, True, None,
                            arch="gemma4")
    history = [dict(m) for m in HISTORY]
    history[2] = {**history[2], "tool_calls": [{"id": "call_1", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert text == format_gemma4(history, [WEATHER_TOOL, PING_TOOL])
    assert "<|tool>declaration:get_weather{" in text and "<|tool>declaration:ping{" in text
    assert f"<|tool_call>call:get_weather{{city:{Q}Paris{Q}}}<tool_call|>" in text
    assert f"<|tool_response>response:get_weather{{value:{Q}18 C{Q}}}<tool_response|>" in text
    assert isinstance(fmt, Grammar) and "<|tool_call>" in fmt.text and "TEXT" in fmt.text
    # A named tool: only it is declared and callable; "none": no tools, the format as given.
    named, fmt = plan_prompt(HISTORY[:2], [WEATHER_TOOL, PING_TOOL],
                             {"type": "function", "function": {"name": "ping"}}, False, None,
                             arch="gemma4")
    assert "declaration:ping" in named and "declaration:get_weather" not in named
    assert '"call:ping"' in fmt.text and "get_weather" not in fmt.text and "TEXT" not in fmt.text
    plain, fmt = plan_prompt(HISTORY[:2], [WEATHER_TOOL], "none", True, "json", arch="gemma4")
    assert "<|tool>" not in plain and fmt == "json"
    with pytest.raises(ToolError, match="either a format or the tools"):
        plan_prompt(HISTORY[:2], [WEATHER_TOOL], None, True, "json", arch="gemma4")
    with pytest.raises(ToolError, match="arguments must be JSON"):
        plan_prompt([{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{"}}]}], None, None, True, None,
            arch="gemma4")


def test_tool_results_named_only_by_the_request_get_their_tool():
    messages = [{"role": "user", "content": "u"},
                {"role": "assistant", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {}}}]},
                {"role": "tool", "tool_call_id": "x9", "content": "r"}]
    text, _ = plan_prompt(messages, None, None, True, None, {"x9": "get_weather"}, "gemma4")
    assert "<|tool_response>response:get_weather{" in text


@pytest.mark.parametrize("arch", ["gemma3", "gemma3n"])
def test_the_gemma3_path_is_unchanged(arch):
    text, fmt = plan_prompt(HISTORY, [WEATHER_TOOL], None, True, None, arch=arch)
    turns, fmt3 = plan_chat(HISTORY, [WEATHER_TOOL], None, True, None)
    assert text == format_gemma(turns) and fmt == fmt3
    assert '{"tool_calls": [{"name": "get_weather"' in text and "<|tool" not in text


# -- Gemma 4's real vocabulary -------------------------------------------------------------------

VOCAB = "models/ggml-vocab-gemma-4.gguf"


@pytest.fixture(scope="module")
def real(llama_cpp_tree):
    """Gemma 4's vocabulary (llama.cpp's vocab-only file) as the engine hands it to
    llguidance: control and user-defined tokens special, the rest by their bytes."""
    from pyengine import _core

    meta, _tensors, _lengths, _info = _core.read_gguf(str(llama_cpp_tree / VOCAB), 262144)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]

    def piece(text: str, kind: int) -> tuple[bytes, bool]:
        if kind in (3, 4, 5):  # control, user-defined, unused
            return text.encode(), True
        if kind == 6:  # <0xHH>
            return bytes([int(text[3:5], 16)]), False
        return text.replace("\u2581", " ").encode(), False

    class RealCore(ToyCore):
        def __init__(self) -> None:
            self.pieces = [piece(t, k) for t, k in zip(tokens, types)]
            self.eos_id, self.bos_id = 1, 2
            self.eog_ids = [1, tokens.index("<turn|>"), tokens.index("<|tool_response>")]
            self._text = {p: i for i, (p, special) in enumerate(self.pieces) if not special}
            self.markup = {m: tokens.index(m) for m in MARKUP[1:4]}

        def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
            out, i = [], 0
            while i < len(text):
                m = next((m for m in self.markup if text.startswith(m, i)), None)
                if m is not None:
                    out.append(self.markup[m])
                    i += len(m)
                    continue
                j = min([text.find(m, i) for m in self.markup if m in text[i:]] or [len(text)])
                data = text[i:j].encode()
                k = 0
                while k < len(data):  # greedily, the longest piece
                    n = max(n for n in range(1, min(len(data) - k, 48) + 1)
                            if data[k:k + n] in self._text)
                    out.append(self._text[data[k:k + n]])
                    k += n
                i = j
            return out

    c = RealCore()
    return c, Grammars(c)


def test_the_grammar_over_gemma4s_real_vocabulary(real):
    core, grammars = real
    grammar = calls_grammar([("get_weather", WEATHER), ("ping", PING)], parallel=True, text=True)
    good = render_call("get_weather", {"city": 'Paris, "the" {city}', "days": 3,
                                       "opts": {"deep": True, "ratio": 0.5}, "tags": ["a"]})
    ids = core.tokenize(good)
    assert any(len(core.pieces[t][0]) > 1 and not core.pieces[t][1] for t in ids)
    assert accepts(grammars, grammar, ids)
    assert accepts(grammars, grammar, core.tokenize("It is sunny in Paris."))
    assert not accepts(grammars, grammar, core.tokenize(render_call("get_weather", {"days": 3})))
    spelled = [core._text.get(bytes([b])) for b in good.encode()]
    if None not in spelled:  # the markup written with text tokens is refused
        assert not accepts(grammars, grammar, spelled)
    m = grammars.matcher(Grammar(grammar))
    assert m.consume_tokens(core.tokenize("<|tool_call>call:ping{}<tool_call|>"))
    assert m.is_accepting()
    assert load_llguidance() is not None
