"""The local-first gateway of the strategy document: configuration from the environment
(``config``), the tier router (``routing``), model names to files (``store``), the providers a
request may go to (``providers``: this engine, a real Ollama server, paid APIs), their circuit
breakers (``breaker``), the cost ledger (``ledger``), the fallback chain over them (``chain``)
and the front door (``front_door``: ``Gateway``, ``complete``)."""

from pyengine.gateway.front_door import Gateway, complete

__all__ = ["Gateway", "complete"]
