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
from pyengine.structured import Grammar, GrammarError

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
