"""Summaries, acceptance targets, markdown table, JSON and plot of bench_batch.py's raw runs.

The metrics are defined in bench_batch.py's docstring; the same functions summarize both engines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

import bench_common as bc
from bench_cpu import finite

# (key, column label): the concurrency table's metrics, in order.
LEVEL_METRICS = (
    ("agg_decode_tok_s", "aggregate decode tok/s"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p95_ms", "ITL p95 ms"),
    ("ttft_mean_ms", "mean TTFT ms"),
)


def level_summary(streams: list[dict[str, Any]]) -> dict[str, float]:
    """One level's metrics from its streams' start times and token arrival times (seconds)."""
    firsts = [s["arrivals"][0] for s in streams if s["arrivals"]]
    lasts = [s["arrivals"][-1] for s in streams if s["arrivals"]]
    decode = sum(max(len(s["arrivals"]) - 1, 0) for s in streams)
    span = max(lasts) - min(firsts) if firsts else math.nan
    gaps = np.concatenate([np.diff(s["arrivals"]) for s in streams] or [np.zeros(0)])
    ttfts = [s["arrivals"][0] - s["start"] for s in streams if s["arrivals"]]
    return {
        "agg_decode_tok_s": decode / span if span > 0 else math.nan,
        "itl_p50_ms": float(np.percentile(gaps, 50)) * 1e3 if gaps.size else math.nan,
        "itl_p95_ms": float(np.percentile(gaps, 95)) * 1e3 if gaps.size else math.nan,
        "ttft_mean_ms": float(np.mean(ttfts)) * 1e3 if ttfts else math.nan,
        "decode_tokens": decode,
        "span_s": span,
        "tokens_per_stream": [len(s["arrivals"]) for s in streams],
    }


def _cached_tokens(info: dict[str, Any]) -> float:
    """Prompt tokens an engine reused instead of computing (its own report)."""
    if "cached_tokens" in info:
        return info["cached_tokens"]
    timings = info.get("timings") or {}
    return timings.get("cache_n", info.get("tokens_cached", math.nan))


def _prefix_rows(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per table row (engine, or llama-server variant): each repetition's prefix test."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for engine, runs in result["runs"].items():
        for run in runs:
            variants = {"": run["prefix"]} if engine == "pyengine" else run["prefix"]
            for variant, p in variants.items():
                name = engine + {"": "", "default": "", "swa-full": " --swa-full"}.get(
                    variant, f" {variant}")
                rows.setdefault(name, []).append(p)
    return rows


def _target(name: str, measured: float, required: float, detail: str) -> dict[str, Any]:
    """One acceptance target; pass is None when a number it needs was not measured."""
    ok = measured >= required if measured == measured else None
    return {"name": name, "measured": measured, "required": required, "pass": ok,
            "detail": detail}


def summarize(result: dict[str, Any]) -> None:
    """Adds result["summary"]: per-level medians, prefix medians, targets, greedy agreement."""
    levels: dict[str, dict[str, dict[str, float]]] = {}
    per_rep: dict[str, dict[str, list[dict[str, float]]]] = {}
    for engine, runs in result["runs"].items():
        per_rep[engine] = {}
        for run in runs:
            for level, lv in run["levels"].items():
                s = level_summary(lv["streams"])
                if "stats" in lv and lv["stats"].get("steps"):
                    s["mean_batch"] = lv["stats"]["step_sequences"] / lv["stats"]["steps"]
                per_rep[engine].setdefault(level, []).append(s)
        levels[engine] = {lvl: {k: bc.median([r.get(k, math.nan) for r in reps])
                                for k in (*dict(LEVEL_METRICS), "mean_batch")}
                          for lvl, reps in per_rep[engine].items()}
    prefix = {}
    for name, reps in _prefix_rows(result).items():
        cold = bc.median([r["cold"]["ttft_s"] * 1e3 for r in reps])
        cached = bc.median([r["cached"]["ttft_s"] * 1e3 for r in reps])
        prefix[name] = {"cold_ms": cold, "cached_ms": cached, "ratio": bc.ratio(cold, cached),
                        "cached_tokens": bc.median([_cached_tokens(r["cached"]["info"])
                                                    for r in reps]),
                        "prompt_tokens": reps[0]["cached"]["prompt_tokens"]}
    py = levels.get("pyengine", {})
    ll = levels.get("llama-server", {})
    nan = math.nan
    agg = "agg_decode_tok_s"
    py1, py8 = py.get("1", {}).get(agg, nan), py.get("8", {}).get(agg, nan)
    ll8 = ll.get("8", {}).get(agg, nan)
    pp = prefix.get("pyengine", {})
    targets = [
        _target("pyengine 8 streams >= 4x pyengine 1 stream", bc.ratio(py8, py1), 4.0,
                f"{py8:.2f} vs {py1:.2f} tok/s"),
        _target("pyengine 8 streams >= 2x llama-server --parallel 8", bc.ratio(py8, ll8), 2.0,
                f"{py8:.2f} vs {ll8:.2f} tok/s"),
        _target("pyengine cached-prefix TTFT >= 10x lower than cold", pp.get("ratio", nan), 10.0,
                f"{pp.get('cold_ms', nan):.1f} vs {pp.get('cached_ms', nan):.1f} ms"),
    ]
    if result["config"].get("cuda"):  # the CUDA backend's own targets (both engines on the GPU)
        ll1, ll32 = ll.get("1", {}).get(agg, nan), ll.get("32", {}).get(agg, nan)
        py32 = py.get("32", {}).get(agg, nan)
        targets += [
            _target("pyengine CUDA decode at 1 stream >= 1.0x llama.cpp CUDA",
                    bc.ratio(py1, ll1), 1.0, f"{py1:.2f} vs {ll1:.2f} tok/s"),
            _target("pyengine CUDA aggregate at 32 streams >= 1.5x llama.cpp CUDA",
                    bc.ratio(py32, ll32), 1.5, f"{py32:.2f} vs {ll32:.2f} tok/s"),
        ]
    gpu = {engine: bc.median([r["gpu_memory_mib"] for r in runs
                              if r.get("gpu_memory_mib") is not None] or [nan])
           for engine, runs in result["runs"].items()}
    # Leading greedy tokens of the single stream the engines agree on: same model, same prompt.
    agreement = []
    if "llama-server" in result["runs"]:
        for a, b in zip(result["runs"]["pyengine"], result["runs"]["llama-server"]):
            if "1" in a["levels"] and "1" in b["levels"]:
                x, y = a["levels"]["1"]["streams"][0]["tokens"], \
                    b["levels"]["1"]["streams"][0]["tokens"]
                agreement.append(next((i for i, (p, q) in enumerate(zip(x, y)) if p != q),
                                      min(len(x), len(y))))
    result["summary"] = {"levels": levels, "levels_per_rep": per_rep, "prefix": prefix,
                         "targets": targets, "greedy_agreement": agreement,
                         "gpu_memory_mib": gpu}


def _fmt(v: Any, spec: str | None = None) -> str:
    """A table cell: spec when given, else three significant digits without an exponent."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if spec:
        return format(v, spec)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:#.3g}"


def markdown(result: dict[str, Any]) -> str:
    """The report as markdown: configuration line, concurrency table, prefix table, targets."""
    cfg, mach, summ = result["config"], result["machine"], result["summary"]
    server = result["versions"].get("llama_server")
    lines = [
        "# Continuous batching: " + " vs ".join(result["engines"]),
        "",
        f"{result['model']['file']} on {mach['cpu_model']} ({mach['logical_cpus']} logical CPUs),"
        f" {cfg['threads']} threads, commit {result['versions'].get('git')}"
        + (f", llama-server {server}" if server else "") + f". Medians of {cfg['reps']} "
        f"repetition(s); load average {mach['loadavg_1min_start']:.1f} at start, "
        f"{mach['loadavg_1min_end']:.1f} at end.",
        "",
        f"Concurrency: {cfg['prompt_tokens']}-token distinct prompts, {cfg['gen']} tokens per "
        "stream, greedy. Aggregate decode tok/s = tokens after each stream's first / (latest last"
        " token - earliest first token). ITL pooled over all streams. Mean batch = sequences in a"
        " step: per pyengine scheduler step, per llama_decode call of llama-server.",
        "",
        "| streams | engine | " + " | ".join(label for _, label in LEVEL_METRICS)
        + " | mean batch |",
        "|---:|:---|" + "---:|" * (len(LEVEL_METRICS) + 1),
    ]
    all_levels = sorted({int(lvl) for e in summ["levels"].values() for lvl in e})
    for lvl in all_levels:
        for engine, by_level in summ["levels"].items():
            m = by_level.get(str(lvl))
            if m:
                cells = [_fmt(m[k]) for k, _ in LEVEL_METRICS]
                lines.append(f"| {lvl} | {engine} | " + " | ".join(cells)
                             + f" | {_fmt(m.get('mean_batch'), '.2f')} |")
    lines += [
        "",
        f"Shared {cfg['prefix_tokens']}-token prefix, time to first token (suffixes of "
        f"{cfg['suffix_tokens']} tokens; cached = same prefix, another suffix, right after):",
        "",
        "| engine | cold ms | cold prompt tok/s | cached ms | cold / cached | prompt tokens reused |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for name, p in summ["prefix"].items():
        cold_tok_s = p["prompt_tokens"] / p["cold_ms"] * 1e3 if p["cold_ms"] else math.nan
        lines.append(f"| {name} | {_fmt(p['cold_ms'])} | {_fmt(cold_tok_s)} | "
                     f"{_fmt(p['cached_ms'])} | "
                     f"{_fmt(p['ratio'], '.3g')} x | {_fmt(p['cached_tokens'], '.0f')} of "
                     f"{p['prompt_tokens']} |")
    gpu = {e: m for e, m in summ.get("gpu_memory_mib", {}).items() if m == m}
    if gpu:
        lines += ["", "GPU memory held at the end of a repetition (nvidia-smi, median): "
                  + ", ".join(f"{e} {_fmt(m)} MiB" for e, m in gpu.items()) + "."]
    lines += ["", "Targets:", ""]
    for t in summ["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        measured = "not measured" if t["pass"] is None else f"{t['measured']:.2f} x"
        lines.append(f"- **{verdict}** {t['name']}: {measured} (needs {t['required']:g} x; "
                     f"{t['detail']})")
    if summ["greedy_agreement"]:
        lines += ["", f"Greedy tokens of the single stream on which the engines agree before the "
                  f"first difference: {summ['greedy_agreement']} of {cfg['gen']}."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Throughput and ITL against streams, and prefix TTFT bars; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summ = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    all_xs = sorted({int(lvl) for by_level in summ["levels"].values() for lvl in by_level})
    for i, (engine, by_level) in enumerate(summ["levels"].items()):
        xs = sorted(int(lvl) for lvl in by_level)
        get = lambda k: [by_level[str(x)][k] for x in xs]  # noqa: E731
        axes[0].plot(xs, get("agg_decode_tok_s"), "o-", color=f"C{i}", label=engine)
        axes[1].plot(xs, get("itl_p50_ms"), "o-", color=f"C{i}", label=f"{engine} p50")
        axes[1].plot(xs, get("itl_p95_ms"), "s--", color=f"C{i}", label=f"{engine} p95")
    for ax, title in ((axes[0], "aggregate decode tokens/s"), (axes[1], "inter-token latency ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_xs, [str(x) for x in all_xs])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    names = list(summ["prefix"])
    for j, (key, label) in enumerate((("cold_ms", "cold"), ("cached_ms", "cached"))):
        vals = [summ["prefix"][n][key] for n in names]
        bars = axes[2].bar([k + (j - 0.5) * 0.4 for k in range(len(names))], vals, 0.4,
                           label=label, color=f"C{j + 2}")
        axes[2].bar_label(bars, [_fmt(v) for v in vals], fontsize=7)
    axes[2].set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_title(f"TTFT ms, shared {result['config']['prefix_tokens']}-token prefix")
    axes[2].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"{result['model']['file']}, {cfg['threads']} threads, {cfg['gen']} tokens per "
                 f"stream, medians of {cfg['reps']} repetition(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_all(result: dict[str, Any], out: Path) -> None:
    """Prints the markdown report and writes it, the JSON and the PNG under out."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    print("\n" + text)
    (out / "bench_batch.md").write_text(text)
    (out / "bench_batch.json").write_text(json.dumps(finite(result), indent=1) + "\n")
    print(f"wrote {out / 'bench_batch.md'} and {out / 'bench_batch.json'}")
    if plot(result, out / "bench_batch.png"):
        print(f"wrote {out / 'bench_batch.png'}")
    else:
        print("matplotlib is not installed: no PNG written")
