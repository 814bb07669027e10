"""The A/B report as a markdown table, a JSON file and a PNG chart.

The chart needs matplotlib, an optional dependency: without it the PNG is skipped with a
message and everything else is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

JSON_NAME, MARKDOWN_NAME, CHART_NAME = "ab.json", "ab.md", "ab.png"
UNEVEN = 1.5  # rounds of one side this far apart are flagged in the table


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _quote(text: str) -> str:
    """Text for a table cell: JSON-quoted (newlines visible), pipes escaped."""
    return "`" + json.dumps(text, ensure_ascii=False).replace("|", "\\|").replace("`", "'") + "`"


def _side_name(report: dict[str, Any], side: str) -> str:
    return report["sides"][side]["label"]


def format_table(report: dict[str, Any]) -> str:
    """The report as markdown: the setup, one row per level and side, then A relative to B and
    whether the greedy outputs agree."""
    sides, cfg = report["sides"], report["settings"]
    lines = [f"## A/B: {sides['A']['label']} vs {sides['B']['label']}", ""]
    for s in ("A", "B"):
        d = sides[s]
        version = f", version {d['server_version']}" if d.get("server_version") else ""
        lines.append(f"- {s} = **{d['label']}**: {d['url']} ({d['api']} API, model "
                     f"`{d['model']}`{version})")
    lines.append(f"- {cfg['requests']} requests per side and level, {cfg['max_tokens']} max "
                 f"tokens, greedy, seed {cfg['seed']}, {cfg['prompts']} prompts, "
                 f"{cfg['warmup']} warm-up, ignore EOS: {'yes' if cfg['ignore_eos'] else 'no'}; "
                 f"sides alternate by round (ABBA...)")
    if cfg.get("mode") == "raw":
        lines.append(f"- raw completions (no server-side template); conversations rendered "
                     f"with {cfg.get('chat_template')}")
    elif cfg.get("mode") == "chat":
        lines.append("- chat requests: each server formats the conversation itself")
    client = report.get("client", {})
    if client.get("load_average_start") is not None:
        lines.append(f"- load average of the client's machine: {client['load_average_start']} "
                     f"at start, {client['load_average_end']} at end; "
                     f"{report['duration_s']:.0f} s measured")
    lines += ["", ("| conc | side | ok/sent | tokens | TTFT p50 ms | TTFT p95 ms | "
                   "decode tok/s p50 | aggregate tok/s | latency p50 / p95 / p99 ms | "
                   "server eval tok/s p50 |"),
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in report["levels"]:
        for s in ("A", "B"):
            d = level[s]
            lat = d["latency_ms"]
            lines.append(
                f"| {level['concurrency']} | {_side_name(report, s)} | {d['ok']}/{d['requests']}"
                f" | {d['completion_tokens']} | {_num(d['ttft_ms'].get('p50'), 0)} | "
                f"{_num(d['ttft_ms'].get('p95'), 0)} | {_num(d['decode_tps'].get('p50'))} | "
                f"{_num(d['aggregate_tps']['median'])} | {_num(lat.get('p50'), 0)} / "
                f"{_num(lat.get('p95'), 0)} / {_num(lat.get('p99'), 0)} | "
                f"{_num(d['server_eval_tps'].get('p50'))} |")
    a, b = _side_name(report, "A"), _side_name(report, "B")
    lines += ["", (f"{a} relative to {b} (speeds: above 1 = {a} faster; times: below 1 = "
                   f"{a} faster):"), "",
              "| conc | aggregate tok/s | decode tok/s p50 | TTFT p50 | latency p50 |",
              "|---:|---:|---:|---:|---:|"]
    for level in report["levels"]:
        r = level["a_vs_b"]
        lines.append(f"| {level['concurrency']} | {_num(r['aggregate_tps'], 2)}x | "
                     f"{_num(r['decode_tps_p50'], 2)}x | {_num(r['ttft_p50'], 2)}x | "
                     f"{_num(r['latency_p50'], 2)}x |")
    agree = report["agreement"]
    lines += ["", (f"Greedy outputs identical for {agree['identical']} of "
                   f"{agree['compared']} request pairs.")]
    diff = agree.get("first_difference")
    if diff:
        lines.append(f"First difference: concurrency {diff['concurrency']}, request "
                     f"{diff['index']}, after {diff['common_prefix_chars']} common characters.")
    if agree.get("prompt_tokens_differ"):
        hint = ("an OpenAI API of Ollama or pyengine wraps a /v1/completions prompt in the chat "
                "format: address them with api=ollama" if cfg.get("mode") == "raw"
                else "each server formats chats its own way: --raw sends both the same text")
        lines.append(f"Prompt token counts differ on {agree['prompt_tokens_differ']} of "
                     f"{agree['prompt_tokens_compared']} pairs: the sides did not read the same "
                     f"prompt (another format, or a doubled BOS; {hint}).")
    if agree.get("pairs"):
        lines += ["", ("| conc | request | prompt | prompt tokens A / B | tokens A / B | "
                       "identical | first difference: character, token A / B, A vs B |"),
                  "|---:|---:|---:|---:|---:|---|---|"]
        for pair in agree["pairs"]:
            d = pair["difference"]
            where = "-" if d is None else (
                f"{d['char']}, {d['token_a']} / {d['token_b']}: {_quote(d['a'])} vs "
                f"{_quote(d['b'])}")
            lines.append(f"| {pair['concurrency']} | {pair['index']} | {pair['prompt']} | "
                         f"{_count(pair['prompt_tokens'][0])} / "
                         f"{_count(pair['prompt_tokens'][1])} | {_count(pair['tokens'][0])} / "
                         f"{_count(pair['tokens'][1])} | "
                         f"{'yes' if pair['identical'] else '**no**'} | {where} |")
    uneven = [f"concurrency {lv['concurrency']} {_side_name(report, s)} "
              f"{lv[s]['aggregate_tps']['spread']:.1f}x" for lv in report["levels"]
              for s in ("A", "B") if (lv[s]["aggregate_tps"].get("spread") or 1) > UNEVEN]
    if uneven:
        lines += ["", ("Uneven rounds (fastest / slowest aggregate tok/s; other load on the "
                       f"machine?): {', '.join(uneven)}.")]
    errors = [(lv["concurrency"], s, e) for lv in report["levels"] for s in ("A", "B")
              for e in lv[s]["error_samples"]]
    if errors:
        lines += ["", "Errors:"] + [f"- concurrency {c}, {_side_name(report, s)}: {e}"
                                    for c, s, e in errors]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Draws aggregate tok/s, TTFT p50 and latency p50/p95 per concurrency level for both sides
    into ``path``; False (after a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    levels = report["levels"]
    xs = list(range(len(levels)))
    ticks = [str(lv["concurrency"]) for lv in levels]
    width = 0.38
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("aggregate tok/s (higher is better)", lambda d: d["aggregate_tps"]["median"]),
              ("TTFT p50, ms (lower is better)", lambda d: d["ttft_ms"].get("p50")),
              ("latency p50, whisker p95, ms (lower is better)",
               lambda d: d["latency_ms"].get("p50"))]
    for ax, (title, value) in zip(axes, panels):
        for k, (s, color) in enumerate((("A", "#1f77b4"), ("B", "#ff7f0e"))):
            ys = [value(lv[s]) or 0.0 for lv in levels]
            bars = ax.bar([x + (k - 0.5) * width for x in xs], ys, width,
                          label=_side_name(report, s), color=color)
            # Inside the bars on the latency panel, where the p95 whiskers stand on top.
            ax.bar_label(bars, fmt="%.0f" if max(ys, default=0) >= 100 else "%.1f", fontsize=8,
                         label_type="center" if "latency" in title else "edge")
        if "latency" in title:  # p95 as a whisker: tail latency matters under load
            for k, s in enumerate(("A", "B")):
                p50 = [lv[s]["latency_ms"].get("p50") or 0.0 for lv in levels]
                p95 = [lv[s]["latency_ms"].get("p95") or 0.0 for lv in levels]
                ax.errorbar([x + (k - 0.5) * width for x in xs], p50,
                            yerr=[[0.0] * len(p50), [h - m for h, m in zip(p95, p50)]],
                            fmt="none", ecolor="black", capsize=3, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs, ticks)
        ax.set_xlabel("concurrency")
        ax.legend(fontsize=8)
    sides = report["sides"]
    fig.suptitle(f"{sides['A']['label']} ({sides['A']['api']}) vs {sides['B']['label']} "
                 f"({sides['B']['api']}): {report['settings']['max_tokens']} max tokens, greedy",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Writes the markdown table, the JSON report and (with matplotlib) the chart into
    ``out_dir``; returns what was written, by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"table": out_dir / MARKDOWN_NAME, "json": out_dir / JSON_NAME}
    written["table"].write_text(format_table(report), encoding="utf-8")
    written["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                               encoding="utf-8")
    if plot(report, out_dir / CHART_NAME):
        written["chart"] = out_dir / CHART_NAME
    return written
