"""Command line: ``python -m pyengine run MODEL PROMPT``, ``show MODEL`` and ``list``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from typing import Any, Sequence

from . import _core
from .config import BACKENDS
from .engine import Engine, resolve_model_path
from .errors import PyEngineError
from .store import ModelRef, ModelStore

_FILE_TYPES = {0: "F32", 1: "F16", 7: "Q8_0", 15: "Q4_K_M", 18: "Q6_K", 32: "BF16"}


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return str(n)


def cmd_run(args: argparse.Namespace) -> int:
    eng = Engine(args.model, n_threads=args.threads, n_ctx=args.ctx, backend=args.backend,
                 dtype=args.dtype)
    opts: dict[str, Any] = dict(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                stop=args.stop or ())
    if args.raw:
        chunks = eng.stream(args.prompt, **opts)
    else:
        chunks = eng.chat_stream([{"role": "user", "content": args.prompt}], **opts)
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        if chunk.done and chunk.completion is not None:
            c = chunk.completion
            sys.stdout.write("\n")
            if args.verbose:
                pe = c.prompt_eval_count / max(c.prompt_eval_duration, 1) * 1e9
                ev = max(c.eval_count - 1, 0) / max(c.eval_duration, 1) * 1e9
                print(f"prompt eval: {c.prompt_eval_count} tokens, {pe:.1f} tokens/s\n"
                      f"eval: {c.eval_count} tokens, {ev:.1f} tokens/s\n"
                      f"done_reason: {c.done_reason}", file=sys.stderr)
    return 0


def describe(path: str) -> str:
    """A human-readable summary of a GGUF model file (no weights are computed with)."""
    meta, tensors, lengths, info = _core.read_gguf(path, 512)  # per-layer arrays whole
    arch = meta.get("general.architecture", "?")
    p = f"{arch}."
    n_params = 0
    types: Counter[str] = Counter()
    for _name, ttype, shape, _nbytes in tensors:
        count = 1
        for d in shape:
            count *= d
        n_params += count
        types[ttype] += 1
    lines = ["  Model"]

    def row(label: str, value: Any) -> None:
        lines.append(f"    {label:<28}{value}")

    row("architecture", arch)
    if "general.name" in meta:
        row("name", meta["general.name"])
    row("parameters", _human(n_params))
    row("file size", f"{info['file_size'] / 2**20:.1f} MiB (GGUF v{info['version']})")
    ft = meta.get("general.file_type")
    row("quantization", _FILE_TYPES.get(ft, f"file_type {ft}") if ft is not None else "unknown")
    row("tensor types", ", ".join(f"{t} x{n}" for t, n in sorted(types.items())))
    for key, label in [("context_length", "context length"), ("embedding_length", "embedding length"),
                       ("block_count", "layers"), ("feed_forward_length", "feed-forward length"),
                       ("attention.head_count", "attention heads"),
                       ("attention.head_count_kv", "key/value heads"),
                       ("attention.key_length", "head dimension"),
                       ("attention.sliding_window", "sliding window"),
                       ("rope.freq_base", "rope base (global)"),
                       ("rope.freq_base_swa", "rope base (local)"),
                       ("rope.scaling.factor", "rope linear scaling")]:
        if p + key in meta:
            value = meta[p + key]
            # A per-layer array (Gemma 3n), read whole only up to 16 entries.
            if isinstance(value, list) and len(set(value)) == 1 and len(value) == lengths[p + key]:
                value = f"{value[0]} (every layer)"
            row(label, value)
    runs = _core.architectures()
    row("supported", "yes" if arch in runs else f"no (this engine runs {', '.join(runs)})")
    lines.append("  Tokenizer")
    row("model", meta.get("tokenizer.ggml.model", "none"))
    if "tokenizer.ggml.tokens" in lengths:
        row("vocabulary", lengths["tokenizer.ggml.tokens"])
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                "add_bos_token", "add_eos_token", "add_space_prefix"):
        if "tokenizer.ggml." + key in meta:
            row(key, meta["tokenizer.ggml." + key])
    row("chat template", "yes" if "tokenizer.chat_template" in meta else "no (Gemma turns)")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    print(describe(str(resolve_model_path(args.model))))
    return 0


def _human_bytes(n: int) -> str:
    """Decimal units as ``ollama list`` prints them: ``815 MB``, ``3.3 GB``, ``512 B``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 and value % 1 else f"{int(value)} {unit}"
    return f"{n} B"


def _human_age(mtime: float, now: float) -> str:
    """``5 minutes ago``, ``3 days ago``: coarse, like ``ollama list``."""
    seconds = max(now - mtime, 0)
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}s ago"
        if seconds >= size:
            return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
    return "Less than a second ago"


def _model_json(ref: ModelRef) -> dict[str, Any]:
    return {"name": ref.name, "id": ref.digest[:12] if ref.digest else None,
            "digest": ref.digest, "size": ref.size, "source": ref.source, "tier": ref.tier,
            "path": str(ref.path), "card": str(ref.card) if ref.card else None,
            "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ref.modified))}


def cmd_list(args: argparse.Namespace) -> int:
    refs = ModelStore().list()
    if args.json:
        print(json.dumps({"models": [_model_json(r) for r in refs]}, indent=2))
        return 0
    now = time.time()
    # ID: the start of the model blob's digest (``ollama list`` shows its manifest's instead).
    # Hashing a registry file of gigabytes just to print an ID is not worth it: those show "-".
    rows = [["NAME", "ID", "SIZE", "SOURCE", "TIER", "MODIFIED"]]
    rows += [[r.name, r.digest[:12] if r.digest else "-", _human_bytes(r.size), r.source,
              r.tier or "-", _human_age(r.modified, now)] for r in refs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("    ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "    " + row[-1])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # FastAPI and uvicorn load only for this command.
    from .server.serve import parse_model_args, resolve_address, serve

    host, port = resolve_address(args.host, args.port)
    serve(parse_model_args(args.models), host, port, n_threads=args.threads, n_ctx=args.ctx,
          kv_cache_mb=args.kv_cache_mb, max_loaded=args.max_loaded, keep_alive=args.keep_alive,
          max_queue=args.max_queue, origins=args.origins, api_key=args.api_key,
          engine_options={"backend": args.backend, "dtype": args.dtype})
    return 0


def cmd_costs(args: argparse.Namespace) -> int:
    from .ledger import CostLedger, format_report

    if args.month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", args.month):
        raise ValueError(f"--month must be YYYY-MM, got {args.month!r}")
    ledger = CostLedger(args.ledger)
    try:
        rep = ledger.report(args.month)
    finally:
        ledger.close()
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    from .bench.ab import main as ab_main

    return ab_main(args)


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="native (C++ core), mlx (mlx-lm; pyengine[mlx]) or auto (MLX on Apple "
                        "silicon when installed); default: PYENGINE_BACKEND, else auto")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "quantized", "q8"),
                   default=None,
                   help="MLX backend: the weights' type (default: the file's; quantized: "
                        "quantized matrices as MLX quantized matrices; q8: its former name)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyengine", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="stream a reply to PROMPT")
    run.add_argument("model")
    run.add_argument("prompt")
    run.add_argument("--raw", action="store_true", help="no chat template: complete PROMPT as is")
    run.add_argument("--max-tokens", type=int, default=256)
    run.add_argument("--temperature", type=float, default=0.8)
    run.add_argument("--top-k", type=int, default=40)
    run.add_argument("--top-p", type=float, default=0.9)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--stop", action="append")
    run.add_argument("--ctx", type=int, default=4096)
    run.add_argument("--threads", type=int, default=None)
    _backend_arguments(run)
    run.add_argument("--verbose", action="store_true", help="print timings to stderr")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="print a model's architecture, sizes and tokenizer")
    show.add_argument("model")
    show.set_defaults(func=cmd_show)

    serve = sub.add_parser("serve", help="serve models over Ollama's HTTP API")
    serve.add_argument("models", nargs="*", metavar="MODEL",
                       help="NAME=PATH, or a GGUF path (named by its file stem)")
    serve.add_argument("--host", help="address to listen on (default: from PYENGINE_HOST, "
                       "as host:port, http://host:port or :port; else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: from PYENGINE_HOST; else 11435)")
    serve.add_argument("--threads", type=int, default=None)
    serve.add_argument("--ctx", type=int, default=4096, help="default context of a request")
    _backend_arguments(serve)
    serve.add_argument("--kv-cache-mb", type=float, default=None,
                       help="KV cache of each loaded model (default MAX_CACHE_SIZE_MB or 2048)")
    serve.add_argument("--max-loaded", type=int, default=3, help="models in memory at once")
    serve.add_argument("--keep-alive", default="5m",
                       help="how long an idle model stays loaded (default 5m; negative: always)")
    serve.add_argument("--max-queue", type=int, default=None,
                       help="generation requests in flight before more get 503 (default: "
                       "PYENGINE_MAX_QUEUE, else OLLAMA_MAX_QUEUE, else 512)")
    serve.add_argument("--origins", action="append", default=None, metavar="ORIGINS",
                       help="more browser origins CORS allows, comma-separated, * as wildcard "
                       "(added to PYENGINE_ORIGINS or OLLAMA_ORIGINS and to localhost's)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: PYENGINE_API_KEY, "
                       "which keeps the key out of the process list; unset: no key)")
    serve.set_defaults(func=cmd_serve)

    ls = sub.add_parser("list", help="list the models available here (registry and Ollama store)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    costs = sub.add_parser("costs", help="report the cost ledger: local vs paid calls and spend")
    costs.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    costs.add_argument("--ledger", help="ledger file (default: PYENGINE_LEDGER or "
                       "~/.pyengine/ledger.sqlite)")
    costs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    costs.set_defaults(func=cmd_costs)

    from .bench import ab as ab_module  # standard library only: cheap to import

    ab = sub.add_parser("ab", help="compare the speed of two chat endpoints (Ollama/OpenAI)",
                        description=ab_module.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ab_module.add_arguments(ab)
    ab.set_defaults(func=cmd_ab)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PyEngineError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
