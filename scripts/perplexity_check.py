#!/usr/bin/env python3
"""pyengine's perplexity against llama.cpp's own ``llama-perplexity`` on the same model and text.

Builds ``llama-perplexity`` from the pinned llama-cpp-python source distribution (through
llama_server.py's build, cached in bench_out/llama-server/), runs it and ``pyengine
perplexity`` with the same model, text, context, chunk limit and thread count, one after the
other, and reports both estimates and their ratio as JSON (bench_out/perplexity_check.json) and
one line of text:

    python scripts/perplexity_check.py MODEL [TEXTFILE] [--ctx 512] [--chunks K] [--threads T]

The default text is tests/data/perplexity_en.txt (10 chunks of 512 Gemma tokens). The bar for a
real model is a ratio within 1% of 1. This is a measurement, not a test: it always reports and
exits 0 when both tools ran.

llama-perplexity runs with its own defaults unless ``--llama-args`` adds options. One of them
moves its result: flash attention (``-fa``, default auto, which the CPU backend turns on)
accumulates the attention output in fp16. On the real Gemma 3 270M Q4_K_M file and the default
text it gives PPL 23.2338, and ``--llama-args "-fa off"`` 23.2098 (0.1% lower), which is what
llama-cpp-python (the tests' oracle, flash attention off) gives to every printed digit. The
batch size does not: ``-b 512`` (one sequence per batch instead of four) prints the same values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPTS_DIR.parent
sys.path.insert(0, str(SCRIPTS_DIR))

from llama_server import DEFAULT_CACHE, ensure_tool, server_version  # noqa: E402

DEFAULT_TEXT = REPO_DIR / "tests" / "data" / "perplexity_en.txt"
DEFAULT_OUT = REPO_DIR / "bench_out" / "perplexity_check.json"
FINAL = re.compile(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)")
RUNNING = re.compile(r"\[(\d+)\]([0-9.eE+-]+|nan|inf),")
CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks")
LLAMA_ATTEMPTS = 3


def parse_output(text: str) -> dict[str, Any]:
    """The numbers a llama-perplexity-style log holds: chunks, running values, final estimate."""
    final = FINAL.search(text)
    chunks = CHUNKS.search(text)
    return {"ppl": float(final.group(1)) if final else None,
            "ppl_error": float(final.group(2)) if final else None,
            "n_chunks": int(chunks.group(1)) if chunks else None,
            "running_ppl": [float(v) for _, v in RUNNING.findall(text)]}


def run_logged(cmd: list[str], log: Path) -> tuple[str, float]:
    """Runs cmd, keeps its stdout and stderr in log, returns (both, seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-20:])
        raise RuntimeError(f"{Path(cmd[0]).name} {cmd[1:3]} failed ({proc.returncode}); "
                           f"see {log}\n{tail}")
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="GGUF path or a model name pyengine's store resolves")
    ap.add_argument("textfile", nargs="?", default=str(DEFAULT_TEXT))
    ap.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    ap.add_argument("--chunks", type=int, default=None, help="at most this many chunks")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for both engines (default: every CPU)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="llama.cpp build cache")
    ap.add_argument("--jobs", type=int, help="parallel compile jobs for the build")
    ap.add_argument("--llama-args", default="",
                    help='more llama-perplexity options, one string (e.g. "-fa off")')
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    args = ap.parse_args(argv)

    from pyengine.engine import resolve_model_path

    model = resolve_model_path(args.model)
    text = Path(args.textfile)
    if not text.is_file():
        raise SystemExit(f"text file not found: {text}")
    binary = ensure_tool("llama-perplexity", args.cache, jobs=args.jobs)
    stamp = json.loads((args.cache / "llama-perplexity.json").read_text())
    logs = args.out.parent / "perplexity_check"
    logs.mkdir(parents=True, exist_ok=True)
    chunks = ["--chunks", str(args.chunks)] if args.chunks is not None else []
    threads = str(args.threads)

    llama_cmd = [str(binary), "-m", str(model), "-f", str(text), "-c", str(args.ctx),
                 "-t", threads, "-tb", threads, *chunks, *shlex.split(args.llama_args)]
    # llama.cpp's logger prints from a thread that the process does not wait for at exit, so a
    # run's last lines (the final estimate among them) are now and then lost: run it again.
    for attempt in range(1, LLAMA_ATTEMPTS + 1):
        llama_out, llama_s = run_logged(llama_cmd, logs / "llama-perplexity.log")
        if FINAL.search(llama_out):
            break
        print(f"llama-perplexity's output lacks its final estimate (attempt {attempt} of "
              f"{LLAMA_ATTEMPTS})", file=sys.stderr)
    ours_cmd = [sys.executable, "-m", "pyengine", "perplexity", str(model), str(text),
                "--ctx", str(args.ctx), "--threads", threads, *chunks]
    ours_out, ours_s = run_logged(ours_cmd, logs / "pyengine-perplexity.log")

    llama, ours = parse_output(llama_out), parse_output(ours_out)
    for name, res in (("llama-perplexity", llama), ("pyengine perplexity", ours)):
        if res["ppl"] is None:
            out = llama_out if name == "llama-perplexity" else ours_out
            tail = "\n".join(out.splitlines()[-10:])
            raise SystemExit(f"{name} printed no final estimate; see {logs}\n{tail}")
    ratio = ours["ppl"] / llama["ppl"]
    pairs = list(zip(ours["running_ppl"], llama["running_ppl"]))
    report = {
        "model": str(model), "text": str(text), "n_ctx": args.ctx, "chunks": args.chunks,
        "threads": args.threads,
        "llama_perplexity": dict(llama, seconds=round(llama_s, 2),
                                 version=server_version(binary),
                                 build_s=stamp.get("build_s"), command=llama_cmd),
        "pyengine": dict(ours, seconds=round(ours_s, 2), command=ours_cmd),
        "ratio": ratio,
        "within_1_percent": abs(ratio - 1) <= 0.01,
        # The estimates after each chunk, as printed (4 decimals): the largest relative gap.
        "running_max_rel_diff": max((abs(a / b - 1) for a, b in pairs), default=None),
        "same_chunk_count": llama["n_chunks"] == ours["n_chunks"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"PPL pyengine {ours['ppl']:.4f} +/- {ours['ppl_error']:.5f} ({ours_s:.1f} s), "
          f"llama-perplexity {llama['ppl']:.4f} +/- {llama['ppl_error']:.5f} ({llama_s:.1f} s), "
          f"ratio {ratio:.5f}; n_ctx {args.ctx}, {ours['n_chunks']} chunks "
          f"(llama.cpp: {llama['n_chunks']}), {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
