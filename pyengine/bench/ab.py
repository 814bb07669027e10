"""``pyengine ab``: the same chat workload against two endpoints, A and B, compared.

Each endpoint is an Ollama API (``/api/chat``, NDJSON streaming) or an OpenAI API
(``/v1/chat/completions``, SSE streaming), given as::

    --a URL[,api=ollama|openai][,model=NAME][,name=LABEL][,key_env=VAR]

``api`` defaults to ``openai`` for a URL ending in ``/v1`` and to ``ollama`` otherwise;
``model`` defaults to the server's only model; ``name`` labels the side in the report;
``key_env`` names an environment variable whose value is sent as a bearer API key. E.g.
pyengine against a stock Ollama, both serving the same GGUF::

    pyengine ab --a http://127.0.0.1:11435,model=gemma3:1b,name=pyengine \\
                --b http://127.0.0.1:11434,model=gemma3:1b,name=ollama

Workload: for each concurrency level (``--concurrency 1,4,8``), ``--requests`` requests per
side, greedy (temperature 0), a fixed ``--seed``, ``--max-tokens`` each, prompts taken in turn
from the built-in set or ``--prompts FILE``; request k of a level gets the same prompt on both
sides. ``--warmup`` unmeasured requests per side come first (they also load the models). A
level runs in rounds (``--rounds``; fewer when a round would have fewer requests than the
concurrency); the sides alternate A B, B A, A B, ... from round to round, and never run at the
same time, so drift (thermal, caches, other load) falls on both.

Metrics, measured on the client (a chunk is timestamped when its line arrives):

- TTFT: time from sending the request to the first chunk with text.
- decode tok/s (per request): (tokens - 1) / (last text chunk - first text chunk).
- aggregate tok/s (per round): all tokens of the round / its wall time (first request sent to
  last reply ended); reported as the median over rounds.
- latency: request sent to stream end; p50/p95/p99 by linear interpolation.
- tokens: the server's count (Ollama ``eval_count``, OpenAI ``usage.completion_tokens``) when
  given, else the number of text chunks.
- server eval / prompt tok/s: Ollama ``eval_count / eval_duration`` and ``prompt_eval_count /
  prompt_eval_duration``; llama.cpp's ``timings`` on its OpenAI API; absent otherwise.

Output in ``--out`` (default ``ab_out/``): ``ab.md`` (the table, also printed), ``ab.json``
(settings, per-level summaries, every request) and ``ab.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .clients import (
    Endpoint,
    EndpointError,
    GenerationSettings,
    Reply,
    parse_endpoint,
    probe,
    stream_chat,
)
from .prompts import Message, builtin_prompts, load_prompts
from .stats import median, summarize

Log = Callable[[str], None]


class ABError(Exception):
    """The comparison cannot run: bad settings, an endpoint down, a model missing."""


@dataclass
class ABConfig:
    """Everything one comparison needs."""

    a: Endpoint
    b: Endpoint
    prompts: list[list[Message]] = field(default_factory=builtin_prompts)
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 8])
    requests: int = 8  # per side and level
    rounds: int = 2  # per level, at most; see plan_rounds
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    warmup: int = 1  # per side
    timeout: float = 600.0  # per request, seconds without a byte

    def validate(self) -> None:
        """Raises ``ABError`` for settings that cannot make a benchmark."""
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ABError("concurrency levels must be positive integers")
        if self.requests < 1 or self.rounds < 1 or self.warmup < 0:
            raise ABError("--requests and --rounds must be >= 1, --warmup >= 0")
        if self.settings.max_tokens < 1:
            raise ABError("--max-tokens must be >= 1")
        if not self.prompts:
            raise ABError("no prompts")


def plan_rounds(requests: int, rounds: int, concurrency: int) -> list[int]:
    """Sizes of a level's rounds: ``requests`` split over at most ``rounds`` rounds, fewer when
    a round would otherwise hold fewer requests than ``concurrency`` (it could not load the
    server at that concurrency)."""
    n = max(1, min(rounds, requests // concurrency))
    return [requests // n + (1 if i < requests % n else 0) for i in range(n)]


@dataclass
class Measured:
    """One measured request: where it ran and what came back."""

    side: str  # "A" or "B"
    concurrency: int
    round: int
    index: int  # within the level; both sides' request k use the same prompt
    prompt: int
    start: float  # seconds since the benchmark began
    reply: Reply

    def to_json(self) -> dict[str, Any]:
        r = self.reply
        return {"side": self.side, "concurrency": self.concurrency, "round": self.round,
                "index": self.index, "prompt": self.prompt, "start_s": round(self.start, 6),
                "ok": r.ok, "error": r.error, "ttft_s": r.ttft, "latency_s": r.latency,
                "completion_tokens": r.completion_tokens, "tokens_source": r.tokens_source,
                "prompt_tokens": r.prompt_tokens, "chunks": len(r.chunk_times),
                "decode_tps": r.decode_tps, "server_eval_tps": r.server_eval_tps,
                "server_prompt_tps": r.server_prompt_tps, "finish_reason": r.finish_reason,
                "text": r.text}


@dataclass
class RoundResult:
    side: str
    concurrency: int
    round: int
    wall_s: float
    requests: list[Measured]

    @property
    def tokens(self) -> int:
        return sum(m.reply.completion_tokens or 0 for m in self.requests if m.reply.ok)


def _run_round(endpoint: Endpoint, side: str, config: ABConfig, concurrency: int,
               round_no: int, first_index: int, size: int, t_bench: float) -> RoundResult:
    """``size`` requests with ``concurrency`` in flight (a closed loop: a finished request makes
    room for the next)."""

    def one(index: int) -> Measured:
        prompt = index % len(config.prompts)
        start = time.perf_counter() - t_bench
        reply = stream_chat(endpoint, config.prompts[prompt], config.settings, config.timeout)
        return Measured(side, concurrency, round_no, index, prompt, start, reply)

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"ab-{side}")
    try:
        measured = list(pool.map(one, range(first_index, first_index + size)))
    finally:
        # On Ctrl-C, requests not yet sent are dropped; those in flight end on their own.
        pool.shutdown(wait=False, cancel_futures=True)
    return RoundResult(side, concurrency, round_no, time.perf_counter() - t0, measured)


def _warm_up(endpoint: Endpoint, config: ABConfig, log: Log) -> None:
    """Unmeasured requests; the first failure aborts with the server's message (a missing
    model shows up here on servers that list none)."""
    for i in range(config.warmup):
        reply = stream_chat(endpoint, config.prompts[i % len(config.prompts)], config.settings,
                            config.timeout)
        if not reply.ok:
            raise ABError(f"{endpoint.label}: warm-up request failed: {reply.error}")
        log(f"  warm-up {endpoint.label} {i + 1}/{config.warmup}: {reply.completion_tokens} "
            f"tokens in {reply.latency:.2f} s")


def _side_summary(rounds: list[RoundResult], requests: int) -> dict[str, Any]:
    measured = [m for r in rounds for m in r.requests]
    ok = [m.reply for m in measured if m.reply.ok]
    errors = [m.reply.error for m in measured if not m.reply.ok]
    wall = sum(r.wall_s for r in rounds)
    tokens = sum(r.tokens for r in rounds)
    sources = sorted({r.tokens_source for r in ok})
    per_round = [r.tokens / r.wall_s if r.wall_s > 0 else None for r in rounds]
    measured_rounds = [v for v in per_round if v is not None]
    return {
        "requests": len(measured), "planned": requests, "ok": len(ok), "errors": len(errors),
        "error_samples": sorted({e for e in errors if e})[:5],
        "completion_tokens": tokens,
        "tokens_per_request": summarize(r.completion_tokens for r in ok),
        "tokens_source": sources[0] if len(sources) == 1 else "mixed" if sources else None,
        "prompt_tokens": summarize(r.prompt_tokens for r in ok),
        "ttft_ms": summarize((r.ttft for r in ok), 1000),
        "latency_ms": summarize((r.latency for r in ok), 1000),
        "decode_tps": summarize(r.decode_tps for r in ok),
        "aggregate_tps": {
            "rounds": per_round, "median": median(per_round),
            "overall": tokens / wall if wall > 0 else None,
            # Fastest round over slowest: far above 1, something else loaded the machine.
            "spread": max(measured_rounds) / min(measured_rounds)
            if len(measured_rounds) > 1 and min(measured_rounds) > 0 else None},
        "server_eval_tps": summarize(r.server_eval_tps for r in ok),
        "server_prompt_tps": summarize(r.server_prompt_tps for r in ok),
        "wall_s": wall,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """A relative to B; above 1 means A is faster for the speeds and slower for the times."""
    return {"aggregate_tps": _ratio(a["aggregate_tps"]["median"], b["aggregate_tps"]["median"]),
            "decode_tps_p50": _ratio(a["decode_tps"].get("p50"), b["decode_tps"].get("p50")),
            "ttft_p50": _ratio(a["ttft_ms"].get("p50"), b["ttft_ms"].get("p50")),
            "latency_p50": _ratio(a["latency_ms"].get("p50"), b["latency_ms"].get("p50"))}


def _agreement(measured: list[Measured]) -> dict[str, Any]:
    """Whether both sides produced the same text for the same request (greedy decoding on
    the same model file should)."""
    by_key: dict[tuple[int, int], dict[str, Measured]] = {}
    for m in measured:
        if m.reply.ok:
            by_key.setdefault((m.concurrency, m.index), {})[m.side] = m
    pairs = [(k, v["A"], v["B"]) for k, v in sorted(by_key.items()) if len(v) == 2]
    differing = [(k, a, b) for k, a, b in pairs if a.reply.text != b.reply.text]
    out: dict[str, Any] = {"compared": len(pairs), "identical": len(pairs) - len(differing)}
    if differing:
        (c, i), a, b = differing[0]
        common = 0
        while common < min(len(a.reply.text), len(b.reply.text)) and \
                a.reply.text[common] == b.reply.text[common]:
            common += 1
        out["first_difference"] = {"concurrency": c, "index": i, "prompt": a.prompt,
                                   "common_prefix_chars": common,
                                   "a": a.reply.text[:200], "b": b.reply.text[:200]}
    return out


def _load_average() -> float | None:
    """The 1-minute load average of this machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_ab(config: ABConfig, log: Log | None = None) -> dict[str, Any]:
    """Runs the comparison and returns the report (a JSON-ready dict; see ``report.py``).

    Raises ``ABError`` (settings, warm-up) or ``EndpointError`` (an endpoint down, the wrong
    API, a missing model) before anything is measured.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    config.validate()
    endpoints: dict[str, Endpoint] = {}
    facts: dict[str, dict[str, Any]] = {}
    for side, endpoint in (("A", config.a), ("B", config.b)):
        endpoints[side], facts[side] = probe(endpoint)
        log(f"{side} = {endpoints[side].describe()}")
    for side in ("A", "B"):
        _warm_up(endpoints[side], config, log)

    t_bench = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = _load_average()
    levels = []
    all_measured: list[Measured] = []
    order_flip = False
    for c in config.concurrency:
        sizes = plan_rounds(config.requests, config.rounds, c)
        rounds: dict[str, list[RoundResult]] = {"A": [], "B": []}
        first = 0
        for r, size in enumerate(sizes):
            for side in (("B", "A") if order_flip else ("A", "B")):
                result = _run_round(endpoints[side], side, config, c, r, first, size, t_bench)
                rounds[side].append(result)
                all_measured += result.requests
                bad = sum(not m.reply.ok for m in result.requests)
                log(f"concurrency {c} round {r + 1}/{len(sizes)} {side}: {size} requests, "
                    f"{result.tokens} tokens in {result.wall_s:.2f} s"
                    f" ({result.tokens / result.wall_s:.1f} tok/s)"
                    + (f", {bad} failed" if bad else ""))
            order_flip = not order_flip
            first += size
        a, b = (_side_summary(rounds[s], config.requests) for s in ("A", "B"))
        levels.append({"concurrency": c, "rounds": len(sizes), "A": a, "B": b,
                       "a_vs_b": _compare(a, b)})

    return {
        "version": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t_bench,
        # Other work on the machine skews both sides; the load average shows whether there was.
        "client": {"python": platform.python_version(), "platform": platform.platform(),
                   "load_average_start": load_start, "load_average_end": _load_average()},
        "sides": {s: {"label": e.label, "url": e.url, "api": e.api, "model": e.model,
                      "server_version": facts[s].get("version")} for s, e in endpoints.items()},
        "settings": {"concurrency": config.concurrency, "requests": config.requests,
                     "rounds": config.rounds, "max_tokens": config.settings.max_tokens,
                     "seed": config.settings.seed, "temperature": 0,
                     "ignore_eos": config.settings.ignore_eos, "warmup": config.warmup,
                     "prompts": len(config.prompts), "timeout_s": config.timeout},
        "levels": levels,
        "agreement": _agreement(all_measured),
        "requests": [m.to_json() for m in all_measured],
    }


# -- command line ------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,8, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ab`` subcommand's options."""
    spec = "URL[,api=ollama|openai][,model=NAME][,name=LABEL][,key_env=VAR]"
    parser.add_argument("--a", required=True, metavar="SPEC",
                        help=f"endpoint A: {spec}; api defaults to openai for a URL ending in "
                        "/v1, else ollama; model defaults to the server's only model")
    parser.add_argument("--b", required=True, metavar="SPEC", help="endpoint B, like --a")
    parser.add_argument("--prompts", metavar="FILE",
                        help="one prompt per line: text, or JSON (a list of messages, "
                        '{"messages": [...]} or {"prompt": "..."}); default: 12 built-in')
    parser.add_argument("--concurrency", type=_levels, default=[1, 4, 8], metavar="N,N,...",
                        help="requests in flight, one level after another (default 1,4,8)")
    parser.add_argument("--requests", type=int, default=8,
                        help="measured requests per side and level (default 8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="A/B alternations per level, at most (default 2; fewer when a "
                        "round would hold fewer requests than the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply (64)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (42); decoding is "
                        "greedy (temperature 0)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured requests per side first (default 1)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="ask servers to generate past end-of-turn so every reply has "
                        "--max-tokens tokens (pyengine, llama.cpp; stock Ollama ignores it)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a request may wait for data (default 600)")
    parser.add_argument("--out", default="ab_out", metavar="DIR",
                        help="where ab.md, ab.json and ab.png go (default ab_out/)")


def config_from_args(args: argparse.Namespace) -> ABConfig:
    """An ``ABConfig`` from parsed ``ab`` options; ``ValueError`` for a malformed spec or
    prompts file."""
    prompts = load_prompts(args.prompts) if args.prompts else builtin_prompts()
    a, b = parse_endpoint(args.a, "A"), parse_endpoint(args.b, "B")
    if a.label == b.label:
        b = replace(b, label=b.label + " (B)")
    return ABConfig(a=a, b=b, prompts=prompts, concurrency=list(args.concurrency),
                    requests=args.requests, rounds=args.rounds,
                    settings=GenerationSettings(max_tokens=args.max_tokens, seed=args.seed,
                                                ignore_eos=args.ignore_eos),
                    warmup=args.warmup, timeout=args.timeout)


def main(args: argparse.Namespace) -> int:
    """Runs ``pyengine ab``: 0 once measured (failed requests are counted in the report, not
    fatal), 1 after a one-line error (no traceback), 130 when interrupted."""
    from .report import format_table, write_outputs

    try:
        config = config_from_args(args)
        report = run_ab(config)
    except (ABError, EndpointError, ValueError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    for kind, path in write_outputs(report, Path(args.out)).items():
        print(f"{kind}: {path}", file=sys.stderr)
    failed = sum(lv[s]["errors"] for lv in report["levels"] for s in ("A", "B"))
    if failed:
        print(f"warning: {failed} requests failed; see the error samples in the JSON",
              file=sys.stderr)
    return 0
