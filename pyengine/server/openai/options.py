"""OpenAI's sampling fields mapped to ``Engine`` options.

As Ollama's OpenAI layer does, the fields become Ollama ``options`` (``max_tokens`` is
``num_predict``) and go through the same mapping as ``/api/chat``'s, so both APIs share one
set of checks. Defaults are those of Ollama's OpenAI layer, which are OpenAI's: a request that
leaves them out samples at temperature 1.0 and top_p 1.0 (not the 0.8 and 0.9 of Ollama's
native API); top_k stays at the engine's default (40, as Ollama's model default); without
``max_tokens`` the reply may run until the context is full. Ranges are the engine's (as in
Ollama, which passes values through), not OpenAI's narrower ones.
"""

from __future__ import annotations

from typing import Any

from pyengine.server.ollama.options import engine_options
from pyengine.server.openai.errors import invalid
from pyengine.server.openai.schemas import SamplingFields

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0

# OpenAI field -> Ollama option, for the fields whose meaning is the same.
_SAME = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
         ("stop", "stop"), ("frequency_penalty", "frequency_penalty"),
         ("presence_penalty", "presence_penalty"))


def max_tokens_of(value: int | None, param: str) -> int | None:
    """A token limit from ``max_tokens`` or ``max_completion_tokens``; at least 1, as OpenAI
    requires (None: no limit)."""
    if value is not None and value < 1:
        raise invalid(f"'{param}' must be at least 1, got {value}", param=param)
    return value


def sampling_options(req: SamplingFields, max_tokens: int | None) -> dict[str, Any]:
    """Keyword options for ``Engine.astream`` from a request's sampling fields.

    Raises ``OpenAIError`` (400, naming the field) for a wrongly typed or out-of-range value,
    for ``n`` other than 1 and for a non-empty ``logit_bias``.
    """
    if req.n is not None and req.n != 1:
        raise invalid("only one choice per request is supported ('n' must be 1)", param="n")
    if req.logit_bias:
        raise invalid("'logit_bias' is not supported by this server", param="logit_bias")
    options: dict[str, Any] = {
        "temperature": DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        "top_p": DEFAULT_TOP_P if req.top_p is None else req.top_p,
        "num_predict": max_tokens,
    }
    for field, name in _SAME[2:]:
        options[name] = getattr(req, field)
    if options["top_p"] == 0:
        # OpenAI allows 0 (the smallest nucleus: the most likely token alone), which the
        # sampler's (0, 1] range does not: top_k 1 is the same choice.
        options.update(top_p=1.0, top_k=1)
    for field, name in _SAME:
        try:  # one by one, so the error names the field at fault
            engine_options({name: options[name]})
        except ValueError as e:
            raise invalid(f"invalid value for '{field}': {e}", param=field) from None
    return engine_options(options)
