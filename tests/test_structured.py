"""Constrained decoding in the engine: JSON, JSON Schemas and grammars enforced while decoding
(llguidance masks applied in the batcher), finishing within the token budget, on every backend.

Outputs are sampled at temperature 1 from random-weight models, whose free text is noise: only
the grammar makes them parse, so each check fails loudly if a mask is lost or misapplied.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from json_schemas import obj
from pyengine import Engine
from pyengine.structured import Grammar, GrammarError, ToolError
from pyengine.structured.tools import plan_chat

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "when"],
          "properties": {"name": {"type": "string"},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "when": {"type": "string", "format": "date"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                  "maxItems": 3}}}


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(tiny, n_ctx=2048) as e:
        yield e


def valid(text: str, schema: dict) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=CHECKER)
    return value


def test_json_format_is_any_object(engine):
    for seed in range(4):
        c = engine.generate("JSON:", max_tokens=48, temperature=1.0, seed=seed, format="json")
        assert isinstance(json.loads(c.text), dict), c.text
        assert c.done_reason == "stop" and c.eval_count <= 48


def test_schema_outputs_validate(engine):
    for seed in range(6):
        c = engine.generate("Who?", max_tokens=120, temperature=1.0, seed=seed, format=PERSON)
        valid(c.text, PERSON)
        assert c.done_reason == "stop"


def test_the_budget_is_kept_and_the_answer_closed(engine):
    """An unbounded string runs on in a random model: the row closes the object in time."""
    schema = {"type": "object", "required": ["story"], "properties": {"story": {"type": "string"}}}
    for budget in (12, 20, 40):
        c = engine.generate("Tell:", max_tokens=budget, temperature=1.0, seed=budget,
                            format=schema)
        valid(c.text, schema)
        assert c.eval_count <= budget and c.done_reason == "stop"


def test_a_budget_that_cannot_hold_an_answer_is_refused(engine):
    with pytest.raises(GrammarError, match="cannot hold a complete answer"):
        engine.generate("x", max_tokens=4, format=PERSON)


@pytest.mark.parametrize("fmt", [
    {"type": "object", "properties": {"a": {"type": "nonsense"}}},
    {"type": "string", "pattern": "(unclosed"},
    {"$ref": "#/$defs/missing"},
    "yaml", 42, Grammar("start: (", "lark"), Grammar('root ::= "unterminated', "gbnf"),
    Grammar("x", "peg"),
])
def test_bad_formats_are_refused_before_any_work(engine, fmt):
    before = engine.stats()["finished"]
    with pytest.raises(GrammarError):
        engine.generate("x", max_tokens=16, format=fmt)
    assert engine.stats()["finished"] == before


def test_lark_and_gbnf_grammars(engine):
    lark = Grammar('start: ("yes" | "no") " because " /[a-z]{1,12}/')
    gbnf = Grammar('root ::= [0-9]{3} "-" [0-9]{4}', "gbnf")
    for seed in range(3):
        a = engine.generate("?", max_tokens=24, temperature=1.0, seed=seed, format=lark).text
        assert re.fullmatch(r"(yes|no) because [a-z]{1,12}", a), a
        b = engine.generate("?", max_tokens=24, temperature=1.0, seed=seed, format=gbnf).text
        assert re.fullmatch(r"\d{3}-\d{4}", b), b


def test_constrained_and_free_rows_share_steps(tiny, engine):
    """Four constrained and four free requests in the same steps (the engine waits for all
    eight before its first): every constrained answer validates and every free one is the text
    it has alone (the free rows pay nothing)."""
    alone = [engine.generate(f"free {i}", max_tokens=24, temperature=0).text for i in range(4)]
    with Engine(tiny, n_ctx=2048, max_batch=8, batch_wait_ms=10_000) as shared:
        free = [shared.stream(f"free {i}", max_tokens=24, temperature=0) for i in range(4)]
        constrained = [shared.stream("Who?", max_tokens=120, temperature=1.0, seed=i,
                                     format=PERSON) for i in range(4)]
        texts = ["".join(c.text for c in s) for s in free + constrained]
        assert shared.stats()["max_step_sequences"] == 8
    assert texts[:4] == alone
    for text in texts[4:]:
        valid(text, PERSON)


def test_random_schemas_always_validate(engine):
    """The property: a few hundred schemas of the features agents use, each sampled once at
    temperature 1; every output validates, or the format was refused before any work."""
    rng = random.Random(7)
    refused = 0
    for i in range(300):
        schema = obj(rng)
        try:
            c = engine.generate("Answer:", max_tokens=256, temperature=1.0, seed=i,
                                format=schema)
        except GrammarError as e:
            assert "cannot hold a complete answer" in str(e)
            refused += 1
            continue
        try:
            valid(c.text, schema)
        except (ValueError, jsonschema.ValidationError) as e:
            raise AssertionError(f"schema {json.dumps(schema)}\noutput {c.text!r}") from e
    assert refused <= 6  # budgets too small for a whole answer, refused up front


def test_mlx_backend_follows_the_format(tiny):
    pytest.importorskip("mlx.core")
    with Engine(tiny, n_ctx=1024, backend="mlx") as e:
        for seed in range(3):
            c = e.generate("Who?", max_tokens=120, temperature=1.0, seed=seed, format=PERSON)
            valid(c.text, PERSON)
        with pytest.raises(GrammarError):
            e.generate("x", format={"type": "nonsense"})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "additionalProperties": False,
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"enum": ["C", "F"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["zone"]}}}


def check_calls(calls, allowed: dict) -> None:
    assert calls
    for call in calls:
        schema = allowed[call.name]["function"]["parameters"]
        jsonschema.validate(call.arguments, schema, format_checker=CHECKER)


def test_required_tool_calls_are_well_formed(engine):
    tools = {"get_weather": WEATHER, "get_time": TIME}
    for seed in range(4):
        c = engine.chat([{"role": "user", "content": "Weather in Paris?"}],
                        tools=list(tools.values()), tool_choice="required",
                        max_tokens=96, temperature=1.0, seed=seed)
        assert c.text == ""
        check_calls(c.tool_calls, tools)


def test_a_named_tool_and_one_call_only(engine):
    for seed in range(3):
        c = engine.chat([{"role": "user", "content": "Time?"}], tools=[WEATHER, TIME],
                        tool_choice={"type": "function", "function": {"name": "get_time"}},
                        parallel_tool_calls=False, max_tokens=64, temperature=1.0, seed=seed)
        assert len(c.tool_calls) == 1 and c.tool_calls[0].name == "get_time"
        check_calls(c.tool_calls, {"get_time": TIME})


def test_auto_is_text_or_calls_and_streams_text_only(engine):

    for seed in range(12):
        chunks = list(engine.chat_stream([{"role": "user", "content": "Hi"}], tools=[WEATHER],
                                         max_tokens=48, temperature=1.0, seed=seed))
        completion = chunks[-1].completion
        streamed = "".join(ch.text for ch in chunks)
        if completion.tool_calls:
            assert streamed == "" and completion.text == ""
            check_calls(completion.tool_calls, {"get_weather": WEATHER})
        else:
            assert streamed == completion.text and not completion.text.startswith("{")


def test_tool_history_is_rendered_as_turns(engine):
    """A call and its result in the history reach the model as the JSON it answers with and a
    user turn holding the result."""
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "tool_name": "get_weather", "content": "18 C, sunny"}]
    rendered, fmt = plan_chat(history, [WEATHER], None, True, None)
    assert rendered[0]["role"] == "system" and "get_weather" in rendered[0]["content"]
    assert json.loads(rendered[2]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert rendered[3] == {"role": "user", "content": "Tool result (get_weather):\n18 C, sunny"}
    assert isinstance(fmt, Grammar)
    c = engine.chat(history, tools=[WEATHER], max_tokens=32, temperature=0)
    assert c.done_reason in ("stop", "length")


@pytest.mark.parametrize("kwargs, match", [
    ({"tools": "x"}, "tools must be a list"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "name"),
    ({"tools": [WEATHER, WEATHER]}, "given twice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "unknown tool"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "format": "json"}, "either a format or the tools"),
])
def test_bad_tools_are_refused(engine, kwargs, match):
    with pytest.raises(ToolError, match=match):
        engine.chat([{"role": "user", "content": "x"}], max_tokens=8, **kwargs)
