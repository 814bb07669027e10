"""What a constrained request's output must follow, as llguidance compiles it.

A request's ``format`` is one of:

- ``"json"``: any JSON object (Ollama's ``format: "json"``, OpenAI's ``json_object``);
- a ``dict``: a JSON Schema the output must validate against;
- a ``Grammar``: a Lark grammar, or a GBNF one as llama.cpp writes them.

llguidance (llama.cpp's own choice) compiles it into a grammar (``grammar_text``); the solver
(``structured.solver``) matches it over a model's vocabulary while decoding. JSON is generated
compactly (no free whitespace between tokens): a model may otherwise fill
its budget with spaces and newlines that every JSON grammar allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# llguidance's JSON compiler: separators fixed ("," and ":"), no free whitespace.
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}

# RFC 3339 dates and times as validators check them: a calendar date (month lengths, 29
# February in leap years only, no year 0), hours 00-23, seconds 00-59 (no leap second), an
# explicit offset. The generic formats would also let through 2023-02-30 or 0000-01-01.
_YEAR = r"([1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])"
_LEAP = r"(\d{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (rf"({_YEAR}-(0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|{_YEAR}-(0[469]|11)-(0[1-9]|[12]\d|30)"
         rf"|{_YEAR}-02-(0[1-9]|1\d|2[0-8])|{_LEAP}-02-29)")
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
STRICT_FORMATS = {"date": f"^{_DATE}$", "time": f"^{_TIME}$", "date-time": f"^{_DATE}T{_TIME}$"}


def strict_formats(schema: Any) -> Any:
    """The schema with its date, time and date-time formats as the exact patterns above
    (where a property has no pattern of its own)."""
    if isinstance(schema, list):
        return [strict_formats(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_formats(v) for k, v in schema.items()}
    fmt = out.get("format")
    if isinstance(fmt, str) and fmt in STRICT_FORMATS and "pattern" not in out:
        del out["format"]
        out["pattern"] = STRICT_FORMATS[fmt]
    return out


class GrammarError(ValueError):
    """A format the grammar compiler refuses (the APIs answer it with a 400 naming why)."""


@dataclass(frozen=True)
class Grammar:
    """A grammar in ``syntax`` "lark" (llguidance's Lark dialect) or "gbnf" (llama.cpp's)."""

    text: str
    syntax: str = "lark"


Format = Any  # "json" | dict (a JSON Schema) | Grammar


def load_llguidance() -> Any:
    try:
        import llguidance
    except ImportError:  # a dependency of the package; missing only in a broken install
        raise GrammarError("constrained decoding needs the llguidance package "
                           "(pip install llguidance)") from None
    return llguidance


def grammar_text(fmt: Format) -> str:
    """The llguidance grammar of a format, checked; ``GrammarError`` naming what is wrong
    when it is not one (an unknown type, a bad pattern, a dangling reference, ...)."""
    text = _compile(fmt)
    error = load_llguidance().LLMatcher.validate_grammar(text)
    if error:
        raise GrammarError(f"invalid format: {error}")
    return text


def _compile(fmt: Format) -> str:
    llg = load_llguidance()
    matcher = llg.LLMatcher
    try:
        if isinstance(fmt, str):
            if fmt != "json":
                raise GrammarError(f'format must be "json", a JSON Schema or a grammar, '
                                   f'got {fmt!r}')
            return matcher.grammar_from_json_schema(ANY_OBJECT, overrides=JSON_OPTIONS)
        if isinstance(fmt, dict):
            json.dumps(fmt)  # a schema must be JSON itself
            return matcher.grammar_from_json_schema(strict_formats(fmt), overrides=JSON_OPTIONS)
        if isinstance(fmt, Grammar):
            if fmt.syntax == "lark":
                return matcher.grammar_from_lark(fmt.text)
            if fmt.syntax == "gbnf":
                from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark

                try:
                    return matcher.grammar_from_lark(gbnf_to_lark(fmt.text))
                except GbnfToLarkError as e:
                    raise GrammarError(f"invalid GBNF grammar: {e}") from None
            raise GrammarError(f'grammar syntax must be "lark" or "gbnf", got {fmt.syntax!r}')
    except GrammarError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:
        raise GrammarError(f"invalid format: {e}") from None
    raise GrammarError(f"format must be \"json\", a JSON Schema (an object) or a Grammar, "
                       f"got {type(fmt).__name__}")
