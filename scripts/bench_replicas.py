"""Prefix-aware routing over replicas, measured: a workload of P shared prefixes (about L tokens
each) x S suffixes, in random order and C requests at a time, against ``pyengine serve`` with
one replica (no Ray), and with N replicas on Ray Serve routed by prefix and by power of two
choices alone (Ray Serve's default policy). Reports the prefix tokens each setup computed again
(prompt positions not served from a replica's prefix cache, less each request's own suffix),
throughput and time to first token.

    python scripts/bench_replicas.py MODEL [--replicas 2] [--prefixes 4] [--suffixes 16]
        [--prefix-tokens 1024] [--concurrency 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pyengine import _core

WORDS = ("river stone lantern orbit velvet cedar signal harbor meadow copper quartz ember "
         "falcon willow canyon marble thunder saffron glacier prairie beacon cobalt juniper "
         "tundra").split()


def text_of(tok, seed: int, tokens: int) -> str:
    """Random words, about `tokens` tokens long."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(tok.tokenize(" ".join(words), False, False)) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(16))
    return " ".join(words)


def start_server(model: str, port: int, replicas: int, router: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pyengine", "serve", model, "--port", str(port), "--ctx", "4096",
           "--threads", str(threads), "--keep-alive", "-1"]
    if replicas > 1:
        cmd += ["--replicas", str(replicas), "--router", router]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_workload(port: int, model_name: str, jobs: list[tuple[str, int]], concurrency: int) -> dict:
    """jobs: (prompt, its prefix's token count). Streams each completion to time its first
    token; counts the prompt positions computed (prompt_tokens - cached_tokens)."""
    url = f"http://127.0.0.1:{port}/v1/completions"

    def one(job):
        prompt, prefix_tokens = job
        t0 = time.perf_counter()
        first = None
        usage = None
        with httpx.stream("POST", url, timeout=300, json={
                "model": model_name, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if ev.get("choices") and first is None:
                    first = time.perf_counter() - t0
                if ev.get("usage"):
                    usage = ev["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        computed = usage["prompt_tokens"] - cached
        suffix = usage["prompt_tokens"] - prefix_tokens
        return computed, max(0, computed - suffix), first, r.headers.get("x-pyengine-replica")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - t0
    return {"requests": len(jobs), "computed_tokens": sum(r[0] for r in results),
            "prefix_tokens_computed": sum(r[1] for r in results),
            "ttft_median_s": statistics.median(r[2] for r in results),
            "requests_per_s": len(jobs) / wall, "wall_s": wall,
            "replicas_used": sorted({str(r[3]) for r in results})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--prefixes", type=int, default=4)
    ap.add_argument("--suffixes", type=int, default=16)
    ap.add_argument("--prefix-tokens", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--port", type=int, default=11700)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tok = _core.Tokenizer(args.model)
    prefixes = [text_of(tok, 1000 + i, args.prefix_tokens) for i in range(args.prefixes)]
    prefix_tokens = [len(tok.tokenize(p, True, False)) for p in prefixes]
    jobs = [(prefixes[i] + f" question {j}: " + text_of(tok, 7 * i + j, 24), prefix_tokens[i])
            for i in range(args.prefixes) for j in range(args.suffixes)]
    random.Random(0).shuffle(jobs)
    name = Path(args.model).stem
    cores = os.cpu_count() or 1
    report = {"model": args.model, "prefix_tokens": prefix_tokens, "setups": {}}
    for label, replicas, router in (("1 replica", 1, "prefix"),
                                    (f"{args.replicas} replicas, prefix router", args.replicas, "prefix"),
                                    (f"{args.replicas} replicas, power of two", args.replicas, "default")):
        proc = start_server(args.model, args.port, replicas, router, max(1, cores // replicas))
        try:
            res = run_workload(args.port, name, jobs, args.concurrency)
        finally:
            stop_server(proc)
        report["setups"][label] = res
        print(f"{label}: {json.dumps(res)}", flush=True)
    s = list(report["setups"].values())
    report["prefix_vs_single"] = s[1]["prefix_tokens_computed"] / max(1, s[0]["prefix_tokens_computed"])
    report["prefix_vs_random"] = s[1]["prefix_tokens_computed"] / max(1, s[2]["prefix_tokens_computed"])
    print(f"prefix tokens computed: prefix router / single replica = {report['prefix_vs_single']:.3f}, "
          f"prefix router / power of two = {report['prefix_vs_random']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
