#!/usr/bin/env python3
"""How far llama.cpp's logits move when a synthetic model is quantized: the tolerance budget.

Writes a preset in F32, quantizes it with llama.cpp's own quantizer (quantize_model.py) into each
variant, and runs llama.cpp on every file with the same prompts (BOS + seeded random ids, longer
than the sliding window). For each variant it reports, against llama.cpp on the F32 original, the
relative L2 error of every position's logits row (median, 90th percentile, max) and the top-1
agreement. This is what quantization itself costs, so a second engine on the quantized file can
only be judged against llama.cpp on that same file, never against the F32 logits.

    python scripts/quant_drift.py --preset tiny-k [--variants pure:Q4_K,Q4_K_M] [--json out.json]

A variant is an ftype name (llama.cpp's mix) or pure:FTYPE (every quantizable tensor in the
ftype's type; pure:Q4_K is all Q4_K).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from make_model import PRESETS, make_config, write_model
from quantize_model import quantize, tensor_type_counts

DEFAULT_VARIANTS = ("Q8_0", "pure:Q6_K", "pure:Q4_K", "Q4_K_M", "pure:IQ4_XS", "pure:Q4_0",
                    "pure:Q2_K")


def prompt_ids(n_vocab: int, n: int, seed: int) -> list[int]:
    """BOS and seeded random ids past the control/unused block, as the tests' prompts are."""
    rng = np.random.default_rng(seed)
    return [2] + rng.integers(300, n_vocab, n - 1).tolist()


def llama_logits(path: Path, prompts: list[list[int]], n_threads: int) -> np.ndarray:
    """llama.cpp's logits of every position of every prompt, stacked: [sum(len), n_vocab]."""
    import llama_cpp

    n_ctx = max(len(p) for p in prompts)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                          n_threads=n_threads, verbose=False)
    rows = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
    llm.close()
    return np.concatenate(rows)


def drift(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Relative L2 error of each logits row (median, p90, max) and the top-1 agreement rate."""
    err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"rel_l2_median": float(np.median(err)), "rel_l2_p90": float(np.quantile(err, 0.9)),
            "rel_l2_max": float(err.max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def parse_variant(text: str) -> tuple[str, bool]:
    """'pure:Q4_K' -> ('Q4_K', True); 'Q4_K_M' -> ('Q4_K_M', False)."""
    pure = text.lower().startswith("pure:")
    return (text[5:] if pure else text).upper(), pure


def measure(preset: str, variants: list[str], n_prompts: int, n_tokens: int,
            n_threads: int, workdir: Path) -> list[dict]:
    """One result row per variant (see the module docstring), F32 original first."""
    cfg = make_config(preset)
    if n_tokens <= cfg.sliding_window:
        raise ValueError(f"prompts of {n_tokens} tokens do not pass the window "
                         f"({cfg.sliding_window})")
    prompts = [prompt_ids(cfg.n_vocab, n_tokens, seed) for seed in range(n_prompts)]
    src = write_model(workdir / f"{preset}-f32.gguf", preset, "f32")
    ref = llama_logits(src, prompts, n_threads)
    rows = [{"variant": "F32", "bytes": src.stat().st_size, **drift(ref, ref),
             "types": dict(tensor_type_counts(src))}]
    for variant in variants:
        ftype, pure = parse_variant(variant)
        dst = quantize(src, workdir / f"{preset}-{ftype}{'-pure' if pure else ''}.gguf",
                       ftype, pure=pure)
        rows.append({"variant": variant, "bytes": dst.stat().st_size,
                     **drift(ref, llama_logits(dst, prompts, n_threads)),
                     "types": dict(tensor_type_counts(dst))})
        dst.unlink()
    return rows


def main() -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-k", choices=sorted(PRESETS))
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated ftype names or pure:FTYPE")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96, help="tokens per prompt, BOS included")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.preset, [v for v in args.variants.split(",") if v], args.prompts,
                       args.tokens, args.threads, Path(tmp))
    n_pos = args.prompts * args.tokens
    print(f"{args.preset}: llama.cpp logits vs its logits on the F32 original, "
          f"{args.prompts} prompts x {args.tokens} tokens = {n_pos} positions")
    print(f"{'variant':<12} {'MiB':>6} {'relL2 med':>9} {'p90':>7} {'max':>7} {'top-1':>6}  types")
    for r in rows:
        types = ", ".join(f"{k} {v}" for k, v in sorted(r["types"].items()))
        print(f"{r['variant']:<12} {r['bytes'] / 2**20:6.1f} {r['rel_l2_median']:9.4f} "
              f"{r['rel_l2_p90']:7.4f} {r['rel_l2_max']:7.4f} {r['top1_agreement']:6.3f}  {types}")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "positions": n_pos,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
