"""Random JSON Schemas of the features agents use, for the structured-output property tests:
nested objects with required and optional properties, arrays with item bounds, enums, consts,
anyOf, numbers and integers with bounds, strings with lengths, patterns and formats."""

from __future__ import annotations

import random
from typing import Any

WORDS = ["name", "age", "score", "tags", "answer", "reason", "items", "id", "kind", "value",
         "confidence", "steps", "city", "when", "email", "ok", "note", "level", "owner", "url"]
PATTERNS = [r"^[a-z]{2,8}$", r"^[A-Z][a-z]+$", r"^\d{3}-\d{4}$", r"^(yes|no|maybe)$",
            r"^[a-f0-9]{8}$"]
FORMATS = ["date", "date-time", "time", "email", "uuid"]


def _string(rng: random.Random) -> dict[str, Any]:
    pick = rng.random()
    if pick < 0.25:
        return {"type": "string", "pattern": rng.choice(PATTERNS)}
    if pick < 0.45:
        return {"type": "string", "format": rng.choice(FORMATS)}
    if pick < 0.7:
        lo = rng.randint(0, 4)
        return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(0, 12)}
    return {"type": "string"}


def _number(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["integer", "number"])
    out: dict[str, Any] = {"type": kind}
    if rng.random() < 0.6:
        lo = rng.randint(-100, 100)
        out["minimum"] = lo
        if rng.random() < 0.7:
            out["maximum"] = lo + rng.randint(0, 1000)
    return out


def schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """One random schema; ``depth`` bounds the nesting."""
    roll = rng.random()
    if depth >= 3 or roll < 0.35:
        leaf = rng.random()
        if leaf < 0.3:
            return _string(rng)
        if leaf < 0.55:
            return _number(rng)
        if leaf < 0.65:
            return {"type": "boolean"}
        if leaf < 0.8:
            return {"enum": rng.sample(["red", "green", "blue", 1, 2.5, None, True], 3)}
        if leaf < 0.85:
            return {"const": rng.choice(["fixed", 7, False])}
        return {"type": "null"} if rng.random() < 0.3 else _string(rng)
    if roll < 0.55:
        lo = rng.randint(0, 3)
        out: dict[str, Any] = {"type": "array", "items": schema(rng, depth + 1), "minItems": lo}
        if rng.random() < 0.7:
            out["maxItems"] = lo + rng.randint(0, 4)
        return out
    if roll < 0.65:
        return {"anyOf": [schema(rng, depth + 1) for _ in range(rng.randint(2, 3))]}
    return obj(rng, depth)


def obj(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random object schema (what a reply's top level is)."""
    names = rng.sample(WORDS, rng.randint(1, 5))
    props = {n: schema(rng, depth + 1) for n in names}
    out: dict[str, Any] = {"type": "object", "properties": props,
                           "required": [n for n in names if rng.random() < 0.6]}
    if rng.random() < 0.7:
        out["additionalProperties"] = False
    return out
