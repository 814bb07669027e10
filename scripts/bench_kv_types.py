#!/usr/bin/env python3
"""Prompt and decode speed of pyengine with each KV cache type, alternated in one process.

The engines (one per type, prefix cache off, one token a step) stay loaded, and each repetition
runs the same random prompt through every type in turn (reversed every other repetition), so
that memory bandwidth drifting between runs touches every type alike. Prints medians and every
run's decode rate. With ``--cached-prompt`` the engines keep the prompt in their prefix caches
after a first run, so that each repetition is its decoding only (many cheap repetitions), and
each type's decode rate is also given relative to the first type's in the same repetition.
llama.cpp's figures for the same types come from ``bench_cpu.py --kv-type``.

    python scripts/bench_kv_types.py --preset 1b --dtype q8_0 --context 4096 --reps 5
    python scripts/bench_kv_types.py --context 4096 --cached-prompt --gen-tokens 32 --reps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

import bench_common as bc
from pyengine import Engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--dtype", default="q8_0")
    ap.add_argument("--file", help="a GGUF file instead of a preset")
    ap.add_argument("--model-dir", type=Path, default=Path("bench_models"))
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--context", type=int, default=4096, help="prompt tokens before decoding")
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cached-prompt", action="store_true",
                    help="time decoding only: the prompt stays in each engine's prefix cache")
    args = ap.parse_args()
    path = Path(args.file) if args.file else bc.ensure_model(args.model_dir, args.preset, args.dtype)
    types = args.types.split(",")
    ids = np.random.default_rng(0).integers(bc.FIRST_NORMAL_ID, bc.n_vocab_of(path),
                                            args.context).tolist()
    engines = {t: Engine(path, n_ctx=args.context + args.gen_tokens + 16, n_threads=args.threads,
                         kv_type=t, prefix_cache=args.cached_prompt, speculative="off")
               for t in types}
    runs: dict[str, list[tuple[float, float]]] = {t: [] for t in types}
    if args.cached_prompt:
        for t in types:  # computes the prompt once; the repetitions find it cached
            engines[t].generate(ids, max_tokens=1, temperature=0.0, ignore_eos=True)
    for rep in range(args.reps):
        for t in types if rep % 2 == 0 else types[::-1]:
            c = engines[t].generate(ids, max_tokens=args.gen_tokens, temperature=0.0,
                                    ignore_eos=True)
            runs[t].append((c.prompt_eval_count / c.prompt_eval_duration * 1e9,
                            c.eval_count / c.eval_duration * 1e9))
    print(f"{path.name}, {args.context}-token context, {args.threads} threads, {args.reps} reps")
    for t in types:
        prompt = statistics.median(r[0] for r in runs[t])
        decode = statistics.median(r[1] for r in runs[t])
        print(f"  {t:5s} prompt {prompt:7.1f} tok/s  decode {decode:6.2f} tok/s  (decode runs: "
              + ", ".join(f"{r[1]:.1f}" for r in runs[t]) + ")")
    if args.cached_prompt:
        for t in types[1:]:
            ratios = [runs[t][i][1] / runs[types[0]][i][1] for i in range(args.reps)]
            print(f"  {t} / {types[0]} decode, same repetition: median {statistics.median(ratios):.3f}"
                  f" (from {min(ratios):.3f} to {max(ratios):.3f})")
    for e in engines.values():
        e.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
