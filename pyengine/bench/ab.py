"""``pyengine ab``: the same workload against two endpoints, A and B, compared.

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
side, greedy (temperature 0, no repeat penalty), a fixed ``--seed``, ``--max-tokens`` each,
prompts taken in turn from the built-in set or ``--prompts FILE``; request k of a level gets the
same prompt on both sides.

Requests are chat requests (``/api/chat``, ``/v1/chat/completions``): each server formats the
conversation itself, and two servers that format it differently cannot produce the same text
(llama-server formats a file without a chat template as ChatML, pyengine and Ollama as Gemma
turns). With ``--raw`` they are raw completions (``/api/generate`` with ``raw: true``,
``/v1/completions``): a text prompt is sent as it is, and a conversation is first rendered by
the harness with ``--chat-template`` (``gemma``, the default, or a GGUF file: its own template),
so both sides complete exactly the same text. Both sides add the BOS token themselves.

``--warmup`` unmeasured requests per side come first (they also load the models). A level runs
in rounds (``--rounds``; fewer when a round would have fewer requests than the concurrency);
the sides alternate A B, B A, A B, ... from round to round, and never run at the same time, so
drift (thermal, caches, other load) falls on both.

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

Agreement, per pair (request k of a level on A and on B): whether the texts are identical and,
where not, the first differing character and the chunk it falls in on each side (servers
stream one token per chunk, so that is the token's index, give or take a token held back in
the middle of a UTF-8 character), with both sides' prompt token counts: counts that differ mean
the sides did not read the same prompt (another chat format, a doubled BOS).

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

from pyengine.bench.clients import (
    Endpoint,
    EndpointError,
    GenerationSettings,
    Reply,
    parse_endpoint,
    probe,
    stream_chat,
    stream_completion,
)
from pyengine.bench.prompts import Prompt, as_messages, builtin_prompts, load_prompts
from pyengine.bench.stats import median, summarize
from pyengine.bench.template import ChatTemplate, TemplateError, gemma_template, load_template

Log = Callable[[str], None]


class ABError(Exception):
    """The comparison cannot run: bad settings, an endpoint down, a model missing."""


@dataclass
class ABConfig:
    """Everything one comparison needs."""

    a: Endpoint
    b: Endpoint
    prompts: list[Prompt] = field(default_factory=builtin_prompts)
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 8])
    requests: int = 8  # per side and level
    rounds: int = 2  # per level, at most; see plan_rounds
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    warmup: int = 1  # per side
    timeout: float = 600.0  # per request, seconds without a byte
    # With settings.raw: renders conversations into completion prompts (None: Gemma's format).
    chat_template: ChatTemplate | None = None

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

    def payloads(self) -> list[Prompt]:
        """What each prompt is sent as: conversations for chat requests; with ``raw``, texts
        (conversations rendered with the chat template). Raises ``ABError`` for a template
        that cannot render one."""
        if not self.settings.raw:
            return [as_messages(p) for p in self.prompts]
        template = self.chat_template or gemma_template()
        try:
            return [p if isinstance(p, str) else template.render(p) for p in self.prompts]
        except (TemplateError, ValueError) as e:
            raise ABError(str(e)) from None


def send(endpoint: Endpoint, payload: Prompt, settings: GenerationSettings,
         timeout: float) -> Reply:
    """One request: a raw completion of a text, or a chat request with a conversation."""
    if isinstance(payload, str):
        return stream_completion(endpoint, payload, settings, timeout)
    return stream_chat(endpoint, payload, settings, timeout)


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


def _run_round(endpoint: Endpoint, side: str, config: ABConfig, payloads: list[Prompt],
               concurrency: int, round_no: int, first_index: int, size: int,
               t_bench: float) -> RoundResult:
    """``size`` requests with ``concurrency`` in flight (a closed loop: a finished request makes
    room for the next)."""

    def one(index: int) -> Measured:
        prompt = index % len(payloads)
        start = time.perf_counter() - t_bench
        reply = send(endpoint, payloads[prompt], config.settings, config.timeout)
        return Measured(side, concurrency, round_no, index, prompt, start, reply)

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"ab-{side}")
    try:
        measured = list(pool.map(one, range(first_index, first_index + size)))
    finally:
        # On Ctrl-C, requests not yet sent are dropped; those in flight end on their own.
        pool.shutdown(wait=False, cancel_futures=True)
    return RoundResult(side, concurrency, round_no, time.perf_counter() - t0, measured)


def _warm_up(endpoint: Endpoint, config: ABConfig, payloads: list[Prompt], log: Log) -> None:
    """Unmeasured requests; the first failure aborts with the server's message (a missing
    model shows up here on servers that list none)."""
    for i in range(config.warmup):
        reply = send(endpoint, payloads[i % len(payloads)], config.settings, config.timeout)
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


CONTEXT_CHARS = 24  # shown before a difference; twice that after it


def _piece_at(pieces: list[str], char: int) -> int:
    """Index of the piece holding character ``char`` of their concatenation (``len(pieces)``
    when the text ends before it: the next token would have been the first difference)."""
    end = 0
    for i, piece in enumerate(pieces):
        end += len(piece)
        if char < end:
            return i
    return len(pieces)


def difference(a: Reply, b: Reply) -> dict[str, Any] | None:
    """Where two replies part (None when their texts are identical): the first differing
    character, the chunk (token) it falls in on each side, and the text around it."""
    if a.text == b.text:
        return None
    char = len(os.path.commonprefix([a.text, b.text]))
    lo = max(0, char - CONTEXT_CHARS)
    return {"char": char, "token_a": _piece_at(a.pieces, char),
            "token_b": _piece_at(b.pieces, char),
            "a": a.text[lo:char + 2 * CONTEXT_CHARS], "b": b.text[lo:char + 2 * CONTEXT_CHARS],
            "context_from": lo}


def _agreement(measured: list[Measured]) -> dict[str, Any]:
    """Per pair (request k of a level on both sides), whether both sides produced the same
    text (greedy decoding of the same prompt on the same model file should), where they part
    if not, and whether they read prompts of the same length."""
    by_key: dict[tuple[int, int], dict[str, Measured]] = {}
    for m in measured:
        if m.reply.ok:
            by_key.setdefault((m.concurrency, m.index), {})[m.side] = m
    pairs = []
    for (c, i), sides in sorted(by_key.items()):
        if len(sides) != 2:
            continue
        a, b = sides["A"].reply, sides["B"].reply
        pairs.append({"concurrency": c, "index": i, "prompt": sides["A"].prompt,
                      "identical": a.text == b.text,
                      "prompt_tokens": [a.prompt_tokens, b.prompt_tokens],
                      "tokens": [a.completion_tokens, b.completion_tokens],
                      "finish_reason": [a.finish_reason, b.finish_reason],
                      "difference": difference(a, b)})
    known = [p for p in pairs if None not in p["prompt_tokens"]]
    out: dict[str, Any] = {
        "compared": len(pairs), "identical": sum(p["identical"] for p in pairs),
        "prompt_tokens_compared": len(known),
        "prompt_tokens_differ": sum(p["prompt_tokens"][0] != p["prompt_tokens"][1]
                                    for p in known),
        "pairs": pairs}
    first = next((p for p in pairs if not p["identical"]), None)
    if first is not None:
        d = first["difference"]
        out["first_difference"] = {"concurrency": first["concurrency"], "index": first["index"],
                                   "prompt": first["prompt"], "common_prefix_chars": d["char"],
                                   "token_a": d["token_a"], "token_b": d["token_b"],
                                   "a": d["a"], "b": d["b"]}
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
    payloads = config.payloads()
    endpoints: dict[str, Endpoint] = {}
    facts: dict[str, dict[str, Any]] = {}
    for side, endpoint in (("A", config.a), ("B", config.b)):
        endpoints[side], facts[side] = probe(endpoint)
        log(f"{side} = {endpoints[side].describe()}")
    for side in ("A", "B"):
        _warm_up(endpoints[side], config, payloads, log)

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
                result = _run_round(endpoints[side], side, config, payloads, c, r, first, size,
                                    t_bench)
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
                     "prompts": len(config.prompts), "timeout_s": config.timeout,
                     "repeat_penalty": 1.0, "mode": "raw" if config.settings.raw else "chat",
                     "chat_template": ((config.chat_template or gemma_template()).name
                                       if config.settings.raw else None)},
        "levels": levels,
        "agreement": _agreement(all_measured),
        # What each prompt was sent as: the texts of raw completions show the template's work.
        "payloads": payloads,
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
                        help="one prompt per line: text (stripped) or JSON {\"prompt\": "
                        '"..."} (exact), or a conversation: JSON, a list of messages or '
                        '{"messages": [...]}; default: 12 built-in conversations')
    parser.add_argument("--raw", action="store_true",
                        help="send raw completions (Ollama /api/generate with raw: true, "
                        "OpenAI /v1/completions) instead of chat requests: texts as they are, "
                        "conversations rendered with --chat-template, so both sides complete "
                        "the same text")
    parser.add_argument("--chat-template", metavar="gemma|gemma4|FILE.gguf", default=None,
                        help="with --raw: how conversations become text: gemma (Gemma's turn "
                        "format, the default), gemma4 (Gemma 4's) or a GGUF file's own chat "
                        "template (Gemma's format when it has none)")
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
    if args.chat_template is not None and not args.raw:
        raise ValueError("--chat-template applies to --raw requests only (chat requests are "
                         "formatted by each server)")
    template = load_template(args.chat_template) if args.raw else None
    return ABConfig(a=a, b=b, prompts=prompts, concurrency=list(args.concurrency),
                    requests=args.requests, rounds=args.rounds,
                    settings=GenerationSettings(max_tokens=args.max_tokens, seed=args.seed,
                                                ignore_eos=args.ignore_eos, raw=args.raw),
                    warmup=args.warmup, timeout=args.timeout, chat_template=template)


def main(args: argparse.Namespace) -> int:
    """Runs ``pyengine ab``: 0 once measured (failed requests are counted in the report, not
    fatal), 1 after a one-line error (no traceback), 130 when interrupted."""
    from pyengine.bench.report import format_table, write_outputs

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
