"""OpenAI's HTTP API under ``/v1``: routes (``api``), request schemas, options, errors in
OpenAI's shape and server-sent events."""
