"""A/B speed comparison of two chat endpoints (``pyengine ab``).

- ``clients``: streaming clients for Ollama's ``/api/chat`` and ``/api/generate`` (NDJSON) and
  OpenAI's ``/v1/chat/completions`` and ``/v1/completions`` (SSE); each chunk is timestamped on
  arrival.
- ``prompts``: the built-in prompt set and the reader of ``--prompts`` files.
- ``template``: chat templates that render conversations into raw completion prompts.
- ``stats``: percentiles and summaries.
- ``ab``: the harness (workload, alternation of A and B, per-level summaries) and its CLI.
- ``report``: the table, the JSON file and the optional PNG chart.

Only the standard library is needed; matplotlib, when installed, draws the chart, and jinja2
renders a GGUF file's own chat template.
"""

from pyengine.bench.ab import ABConfig, ABError, run_ab
from pyengine.bench.clients import Endpoint, EndpointError, parse_endpoint

__all__ = ["ABConfig", "ABError", "Endpoint", "EndpointError", "parse_endpoint", "run_ab"]
