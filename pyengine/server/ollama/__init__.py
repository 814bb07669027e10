"""Ollama's HTTP API: routes (``api``), request schemas, options and the Go template subset."""
