#!/usr/bin/env python3
"""CPU benchmark: pyengine against llama.cpp (llama-cpp-python) on the same GGUF and thread count.

For each dtype of a synthetic Gemma 3 or Gemma 3n model it measures prompt tokens/s, greedy
decode tokens/s, time to first token, model load time and RSS, for several repetitions, and
reports medians and the ratio pyengine / llama.cpp. Decode speed is also given as a fraction of
the memory-bandwidth ceiling (measured read bandwidth / weight bytes read per token).

    python scripts/bench_cpu.py --preset 1b --dtypes q8_0,f16 --threads 2 --reps 3

Writes a table to stdout, OUT/bench_cpu.json and OUT/bench_cpu.png (when matplotlib is present).
Every (engine, repetition) runs in a fresh subprocess, so load time and peak RSS are one engine's
own, and engines alternate (A,B,B,A,...) so slow drifts of the machine hit both alike. Load time is
what each constructor takes: llama.cpp maps the file with MAP_POPULATE (reads it all in); pyengine
reads it while repacking the weights for its kernels. A warm-up forward runs before anything else
is timed, so the other metrics are of resident weights either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import bench_common as bc

ENGINES = ("pyengine", "llama.cpp")
# (key, label, higher is better): the table rows, in order.
METRICS = (
    ("prompt_tok_s", "prompt tok/s", True),
    ("decode_tok_s", "decode tok/s", True),
    ("decode_frac_ceiling", "decode / BW ceiling", True),
    ("ttft_ms", "time to first token ms", False),
    ("load_s", "load s", False),
    ("rss_load_mib", "RSS after load MiB", False),
    ("peak_rss_mib", "peak RSS MiB", False),
)
WARMUP_TOKENS = 8
GGML_KV_TYPES = {"q8_0": 8, "q4_0": 2}  # ggml type ids of llama.cpp's type_k / type_v


# ------------------------------------------------------------------------------------ workers

def work_pyengine(model: str, threads: int, n_ctx: int, gen: int, warmup: list[int],
                  prompts: list[list[int]], kv_type: str) -> dict[str, Any]:
    """Loads pyengine, warms it up, and times one greedy generation per prompt."""
    import pyengine

    t0 = time.perf_counter()
    # Decoding one token a step, as llama.cpp's does here (drafts: bench_speculative.py).
    eng = pyengine.Engine(model, n_threads=threads, n_ctx=n_ctx, kv_type=kv_type,
                          speculative="off")
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "rss_load_mib": bc.rss_mib()}
    # Faults the weights in; the warm-up has no BOS, so no prompt shares a cached prefix with it.
    eng.generate(warmup, max_tokens=2, temperature=0.0, ignore_eos=True)
    runs = []
    for ids in prompts:
        t0 = time.perf_counter()
        chunks = eng.stream(ids, max_tokens=gen, temperature=0.0, ignore_eos=True)
        last = next(chunks)  # sampled from the prompt's logits: the first token
        ttft = time.perf_counter() - t0
        for last in chunks:
            pass
        c = last.completion
        runs.append({"prompt_tokens": c.prompt_eval_count, "prompt_s": c.prompt_eval_duration / 1e9,
                     "ttft_s": ttft, "decode_tokens": c.eval_count - 1,
                     "decode_s": c.eval_duration / 1e9, "tokens": list(c.tokens)})
    out["runs"] = runs
    return out


def work_llama(model: str, threads: int, n_ctx: int, gen: int, warmup: list[int],
               prompts: list[list[int]], kv_type: str) -> dict[str, Any]:
    """Loads llama.cpp, warms it up, and times prompt eval plus a greedy decode loop per prompt.

    Argmax reads the last row of logits through llama_get_logits_ith: with logits_all=False,
    Llama.eval no longer copies logits into Llama.scores, which then holds stale memory.
    Only the eval calls are timed for decode, as pyengine's eval_duration times only forwards.
    A quantized cache (kv_type q8_0 / q4_0) needs llama.cpp's flash attention, which is then on.
    """
    import llama_cpp

    cache = {} if kv_type == "f16" else {"type_k": GGML_KV_TYPES[kv_type],
                                          "type_v": GGML_KV_TYPES[kv_type], "flash_attn": True}
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, logits_all=False,
                          verbose=False, **cache)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "rss_load_mib": bc.rss_mib()}
    ctx, n_vocab = llm.ctx, llm.n_vocab()

    def argmax_last() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    llm.reset()
    llm.eval(warmup)
    argmax_last()
    runs = []
    for ids in prompts:
        llm.reset()  # n_tokens = 0; the next eval drops the KV cells past it
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = argmax_last()
        ttft = time.perf_counter() - t0
        tokens, decode_s = [tok], 0.0
        for _ in range(gen - 1):
            t = time.perf_counter()
            llm.eval([tok])
            decode_s += time.perf_counter() - t
            tok = argmax_last()
            tokens.append(tok)
        perf = llama_cpp.llama_perf_context(ctx)  # llama.cpp's own clocks, for cross-checking
        runs.append({"prompt_tokens": len(ids), "prompt_s": t1 - t0, "ttft_s": ttft,
                     "decode_tokens": gen - 1, "decode_s": decode_s, "tokens": tokens,
                     "native": {"prompt_s": perf.t_p_eval_ms / 1e3, "n_prompt": perf.n_p_eval,
                                "decode_s": perf.t_eval_ms / 1e3, "n_decode": perf.n_eval}})
    out["runs"] = runs
    return out


def worker_main(args: argparse.Namespace) -> None:
    """The --worker entry: a JSON payload on stdin, the JSON result on stdout."""
    payload = json.load(sys.stdin)
    work = {"pyengine": work_pyengine, "llama.cpp": work_llama}[args.engine]
    with bc.worker_output() as out:
        result = work(args.model, args.threads, args.prompt_tokens + args.gen_tokens + 16,
                      args.gen_tokens, payload["warmup"], payload["prompts"], args.kv_type)
        result["peak_rss_mib"] = bc.peak_rss_mib()
        json.dump(result, out)


# ------------------------------------------------------------------------------- orchestration

def rep_metrics(res: dict[str, Any], ceiling: float) -> dict[str, Any]:
    """Flattens one worker result (one prompt) into the per-repetition record."""
    run = res["runs"][0]
    decode = run["decode_tokens"] / run["decode_s"] if run["decode_s"] > 0 else math.nan
    return {"prompt_tok_s": run["prompt_tokens"] / run["prompt_s"], "decode_tok_s": decode,
            "decode_frac_ceiling": decode / ceiling, "ttft_ms": run["ttft_s"] * 1e3,
            "load_s": res["load_s"], "rss_load_mib": res["rss_load_mib"],
            "peak_rss_mib": res["peak_rss_mib"], **run}


def bench_dtype(args: argparse.Namespace, dtype: str, bandwidth: float) -> dict[str, Any]:
    """All repetitions of every engine on one dtype (or on the --file given); raw records,
    medians and ratios."""
    path = Path(args.file) if args.file else bc.ensure_model(args.model_dir, args.preset, dtype)
    n_vocab = bc.n_vocab_of(path)
    bytes_per_token = bc.weight_bytes_per_token(path)
    ceiling = bandwidth * 1e9 / bytes_per_token
    prompts = bc.random_prompts(args.reps, args.prompt_tokens, n_vocab, args.seed)
    warmup = np.random.default_rng(args.seed + 1).integers(
        bc.FIRST_NORMAL_ID, n_vocab, WARMUP_TOKENS).tolist()
    worker_args = ["--model", str(path), "--threads", str(args.threads),
                   "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
                   "--kv-type", args.kv_type]
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in args.engines}
    for rep in range(args.reps):
        for engine in (args.engines if rep % 2 == 0 else args.engines[::-1]):
            res = bc.run_worker(Path(__file__), ["--engine", engine, *worker_args],
                                {"warmup": warmup, "prompts": [prompts[rep]]})
            runs[engine].append(rep_metrics(res, ceiling))
            r = runs[engine][-1]
            print(f"  {dtype} rep {rep + 1}/{args.reps} {engine:9s}: prompt {r['prompt_tok_s']:8.1f}"
                  f" tok/s, decode {r['decode_tok_s']:7.2f} tok/s, ttft {r['ttft_ms']:8.1f} ms",
                  file=sys.stderr, flush=True)
    medians = {e: {k: bc.median([r[k] for r in rs]) for k, _, _ in METRICS}
               for e, rs in runs.items()}
    out: dict[str, Any] = {
        "model": {"file": path.name, "file_bytes": path.stat().st_size,
                  "weight_bytes_per_token": bytes_per_token, "ceiling_tok_s": ceiling},
        "runs": runs, "median": medians}
    if set(ENGINES) <= set(args.engines):
        py, ll = medians["pyengine"], medians["llama.cpp"]
        out["ratio"] = {k: bc.ratio(py[k], ll[k]) for k, _, _ in METRICS}
        # Leading greedy tokens both engines agree on: a cheap check they ran the same model.
        out["greedy_agreement"] = [
            next((i for i, (a, b) in enumerate(zip(p["tokens"], q["tokens"])) if a != b),
                 min(len(p["tokens"]), len(q["tokens"])))
            for p, q in zip(runs["pyengine"], runs["llama.cpp"])]
    return out


def print_table(report: dict[str, Any]) -> None:
    """Per dtype: metric, the engines' medians, and pyengine / llama.cpp."""
    engines = report["config"]["engines"]
    mach, cfg = report["machine"], report["config"]
    print(f"\nCPU benchmark: {mach['cpu_model']}, {cfg['threads']} threads, read bandwidth "
          f"{mach['read_bandwidth_gbs']:.1f} GB/s, medians of {cfg['reps']} reps (load average "
          f"{mach['loadavg_1min_start']:.1f} at start, {mach['loadavg_1min_end']:.1f} at end)")
    for dtype, res in report["results"].items():
        m = res["model"]
        print(f"\n{dtype}: {m['file']}, {m['weight_bytes_per_token'] / 1e9:.3f} GB read per token,"
              f" ceiling {m['ceiling_tok_s']:.1f} tok/s")
        head = f"  {'metric':26s}" + "".join(f"{e:>12s}" for e in engines)
        print(head + (f"{'ratio':>9s}" if "ratio" in res else ""))
        for key, label, higher in METRICS:
            line = f"  {label + (' ^' if higher else ' v'):26s}"
            line += "".join(f"{res['median'][e][key]:12.4g}" for e in engines)
            if "ratio" in res:
                line += f"{res['ratio'][key]:8.3f}x"
            print(line)
        if "greedy_agreement" in res:
            print(f"  greedy tokens agreeing before the first difference: {res['greedy_agreement']}"
                  f" of {report['config']['gen_tokens']}")
    print("\n(^ higher is better, v lower is better; ratio = pyengine / llama.cpp)")


def plot(report: dict[str, Any], path: Path) -> bool:
    """Grouped bars of prompt and decode tok/s per dtype, with ratio labels and the ceiling.

    Returns False, writing nothing, when matplotlib is missing (it is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    engines, results = report["config"]["engines"], report["results"]
    dtypes, width = list(results), 0.8 / len(engines)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, title in ((axes[0], "prompt_tok_s", "prompt tokens/s"),
                           (axes[1], "decode_tok_s", "decode tokens/s")):
        for i, engine in enumerate(engines):
            xs = [d + (i - (len(engines) - 1) / 2) * width for d in range(len(dtypes))]
            vals = [results[dt]["median"][engine][key] for dt in dtypes]
            bars = ax.bar(xs, vals, width, label=engine, color=f"C{i}")
            if engine == "pyengine":
                labels = [f"{results[dt]['ratio'][key]:.2f}x" if "ratio" in results[dt] else ""
                          for dt in dtypes]
                ax.bar_label(bars, labels, fontsize=8)
        ticks = list(dtypes)
        if key == "decode_tok_s":
            tallest = max((results[dt]["median"][e][key] for dt in dtypes for e in engines),
                          default=0.0)
            for d, dt in enumerate(dtypes):
                ceiling = results[dt]["model"]["ceiling_tok_s"]
                ticks[d] += f"\nceiling {ceiling:.1f}"
                # A line far above the bars would squash them (small models sit in cache).
                if ceiling <= 2 * tallest:
                    ax.hlines(ceiling, d - 0.45, d + 0.45, colors="k", linestyles="--",
                              label="bandwidth ceiling" if d == 0 else None)
        ax.set_xticks(range(len(dtypes)), ticks)
        ax.set_title(title)
    # One legend under both plots: inside, it would cover the bars or the ceiling line.
    fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    cfg = report["config"]
    what = Path(cfg["file"]).name if cfg.get("file") else f"{cfg['preset']} preset"
    fig.suptitle(f"{what}, {cfg['threads']} threads, {cfg['prompt_tokens']}-token "
                 f"prompt, {cfg['gen_tokens']} generated (labels: pyengine / llama.cpp)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def finite(obj: Any) -> Any:
    """NaN and inf become null: strict JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1b",
                    help="make_model preset: tiny, 1b, 4b, tiny-3n, e2b, e4b")
    ap.add_argument("--dtypes", default="q8_0,f16",
                    help="comma-separated: f32, f16, bf16, q8_0, or any ftype llama-quantize "
                    "takes (q4_k_m, q4_0, iq4_xs, ...: quantized from the F16 file by llama.cpp)")
    ap.add_argument("--file", help="benchmark this GGUF file instead of a preset (e.g. a real "
                    "model: `gemma3:270m` resolves as pyengine run does)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16",
                    help="KV cache type of both engines (llama.cpp: type_k/type_v, with flash "
                    "attention for the quantized ones)")
    ap.add_argument("--model-dir", type=Path, default=Path("bench_models"))
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of "
                    + ", ".join(ENGINES))
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompts")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if args.file and not args.worker:
        from pyengine.gateway.store import resolve_model

        args.file = str(resolve_model(args.file).path)
        args.dtypes = [Path(args.file).stem]
    args.engines = [e for e in args.engines.split(",") if e]
    if bad := set(args.engines) - set(ENGINES):
        ap.error(f"unknown engines {sorted(bad)}")
    if args.threads < 1 or args.reps < 1 or args.prompt_tokens < 2 or args.gen_tokens < 1:
        ap.error("--threads, --reps and --gen-tokens must be >= 1, --prompt-tokens >= 2")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
        return
    load_start = os.getloadavg()[0]
    bandwidth, probe = bc.read_bandwidth_gbs(args.threads)
    print(f"read bandwidth ({probe}, {args.threads} threads): {bandwidth:.1f} GB/s",
          file=sys.stderr)
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "engine", "model")}
    config.update(model_dir=str(args.model_dir), out=str(args.out))
    report: dict[str, Any] = {
        "schema": "pyengine.bench_cpu/1", "date": bc.now_iso(), "config": config,
        "machine": {**bc.machine_info(args.threads), "read_bandwidth_gbs": bandwidth,
                    "bandwidth_probe": probe, "loadavg_1min_start": load_start},
        "versions": bc.versions(), "results": {}}
    for dtype in args.dtypes:
        report["results"][dtype] = bench_dtype(args, dtype, bandwidth)
    args.out.mkdir(parents=True, exist_ok=True)
    # Other load on the machine skews every number: keep it next to them.
    report["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    (args.out / "bench_cpu.json").write_text(json.dumps(finite(report), indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {args.out / 'bench_cpu.json'}")
    if plot(report, args.out / "bench_cpu.png"):
        print(f"wrote {args.out / 'bench_cpu.png'}")
    else:
        print("matplotlib is not installed: no PNG written")


if __name__ == "__main__":
    main()
