#!/usr/bin/env python3
"""Time to first token of a long shared prefix before and after a server restart with
``--prompt-cache``: what the persistent prompt cache buys.

One ``pyengine serve --prompt-cache DIR`` process answers three requests that share a prefix of
--prefix-tokens tokens of English (the first one cold; the third is the prefix's second hit
from memory, which writes its blocks to DIR), then stops. A second process with the same DIR
answers --reps requests with the same prefix and new questions: their time to first token is
compared with the cold one (medians, streamed over real HTTP), and their text with the first
process's answer to the same request.

    python scripts/bench_prompt_cache.py                 # the real Gemma 3 270M file
    python scripts/bench_prompt_cache.py --file gemma3:1b --prefix-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pyengine import Engine
from pyengine.gateway.store import resolve_model
from pyengine.server.testing import ServerProcess

TEXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "perplexity_en.txt"
QUESTIONS = ["In one word, the topic above is", "The text above was written by",
             "Summarise the text above:", "The most important sentence above is",
             "A good title for the text above is", "The tone of the text above is"]


def long_prefix(model: Path, n_tokens: int) -> str:
    """Whole paragraphs of the test text (repeated as needed) up to n_tokens tokens."""
    paragraphs = TEXT.read_text("utf-8").split("\n\n")
    prefix, i = "", 0
    with Engine(model, n_ctx=512) as eng:
        while len(eng.tokenize(prefix)) < n_tokens:
            prefix += paragraphs[i % len(paragraphs)] + "\n\n"
            i += 1
    return prefix


def ask(url: str, name: str, prompt: str, max_tokens: int) -> tuple[float, str]:
    """(seconds to the first generated text, the whole text) of a streamed raw generation."""
    body = {"model": name, "prompt": prompt, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": max_tokens}}
    t0, first, text = time.perf_counter(), None, ""
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            if chunk.get("response") and first is None:
                first = time.perf_counter() - t0
            text += chunk.get("response", "")
    return (first if first is not None else time.perf_counter() - t0), text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default="gemma3:270m", help="a GGUF path or a store name")
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3, help="requests after the restart")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    model = resolve_model(args.file).path
    prefix = long_prefix(model, args.prefix_tokens)
    reps = min(args.reps, len(QUESTIONS) - 2)
    with tempfile.TemporaryDirectory() as cache:
        serve_args = ["--ctx", str(args.prefix_tokens + 512), "--threads", str(args.threads),
                      "--prompt-cache", cache]
        with ServerProcess({"m": model}, args=serve_args) as first:
            cold, _ = ask(first.url, "m", prefix + QUESTIONS[0], args.max_tokens)
            ask(first.url, "m", prefix + QUESTIONS[1], args.max_tokens)
            # The third request with the prefix is its second hit from memory: written to disk.
            before = {q: ask(first.url, "m", prefix + q, args.max_tokens)[1]
                      for q in QUESTIONS[2:2 + reps]}
        with ServerProcess({"m": model}, args=serve_args) as second:
            warm, same = [], 0
            for q in QUESTIONS[2:2 + reps]:
                t, text = ask(second.url, "m", prefix + q, args.max_tokens)
                warm.append(t)
                same += text == before[q]
    w = statistics.median(warm)
    print(f"{model.name}, {args.prefix_tokens}-token prefix, {args.threads} threads: cold TTFT "
          f"{cold * 1e3:.0f} ms; after a restart {w * 1e3:.0f} ms (median of {reps}), "
          f"{w / cold:.3f} of cold; same text {same} of {reps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
