"""Structured output: formats (JSON, JSON Schema, grammars) enforced while decoding."""

from pyengine.structured.formats import Format, Grammar, GrammarError, grammar_text
from pyengine.structured.solver import Grammars
from pyengine.structured.tools import ToolCall, ToolError

__all__ = ["Format", "Grammar", "GrammarError", "Grammars", "ToolCall", "ToolError",
           "grammar_text"]
