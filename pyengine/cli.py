"""Command line: ``python -m pyengine run MODEL PROMPT``, ``show MODEL``, ``list``,
``perplexity MODEL TEXTFILE`` and the server and benchmark commands."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from pyengine import __version__, _core
from pyengine.chat import native_tools
from pyengine.gateway.config import BACKENDS, KV_CACHE_TYPES, Config
from pyengine.engine import Engine
from pyengine.errors import PyEngineError
from pyengine.gguf_facts import file_type_name
from pyengine.model_check import VISION_PREFIXES, effective_config, support_reason
from pyengine.perplexity import (DEFAULT_N_CTX, check_n_ctx, count_chunks, eta_text, perplexity_of_tokens,
                         read_text_file, special_bos)
from pyengine.gateway.store import ModelRef, ModelStore, resolve_model

# Tokens per forward step of a perplexity chunk (llama-perplexity's physical batch, -ub).
PPL_BATCH = 512


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return str(n)


def cmd_run(args: argparse.Namespace) -> int:
    eng = Engine(args.model, n_threads=args.threads, n_ctx=args.ctx, backend=args.backend,
                 dtype=args.dtype, kv_type=args.kv_cache_type, speculative=args.speculative,
                 num_draft=args.num_draft)
    opts: dict[str, Any] = dict(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                stop=args.stop or ())
    if args.format:
        opts["format"] = _format_arg(args.format)
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


def _format_arg(text: str) -> Any:
    """--format's value: "json", a JSON Schema as text, or @FILE holding one."""
    if text == "json":
        return "json"
    source = text
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                source = f.read()
        except OSError as e:
            raise ValueError(f"--format: cannot read {text[1:]}: {e.strerror}") from None
    try:
        schema = json.loads(source)
    except ValueError:
        raise ValueError('--format must be "json", a JSON Schema or @FILE') from None
    if not isinstance(schema, dict):
        raise ValueError("--format: a JSON Schema is an object")
    return schema


def _per_layer_rows(arch: str, shapes: dict[str, list[int]]) -> int:
    """Rows of the architecture's per-layer embedding table (Gemma 3n), 0 when it has none."""
    if arch not in _core.architectures():
        return 0
    for spec in _core.architecture_tensors(arch):
        shape = shapes.get(spec["name"])
        if spec["ne"][-1] == "n_vocab_per_layer" and shape is not None and len(shape) == 2:
            return shape[1]
    return 0


def _ollama_markers(meta: dict[str, Any], tensor_names: list[str]) -> bool:
    """Whether a gemma3 or gemma4 file was written by Ollama's converter (for Gemma 3 the
    markers the core's IsOllamaGemma3 checks; for Gemma 4 the towers in the file or its byte
    pairs named 'llama', as Ollama's own patch for llama.cpp detects them)."""
    if meta.get("general.architecture") == "gemma4":
        return (meta.get("tokenizer.ggml.model") == "llama"
                or any(n.startswith(VISION_PREFIXES) for n in tensor_names))
    return (meta.get("general.architecture") == "gemma3" and (
        "gemma3.mm.tokens_per_image" in meta or "gemma3.rope.global.freq_base" in meta
        or "gemma3.rope.local.freq_base" in meta or "tokenizer.ggml.add_padding_token" in meta
        or "tokenizer.ggml.add_unknown_token" in meta
        or "gemma3.attention.layer_norm_rms_epsilon" not in meta
        or any(n.startswith(VISION_PREFIXES) for n in tensor_names)))


def _support(arch: str, tensors: list, error: str | None) -> str:
    """'yes', or 'no (why)' with the reason loading would give (the vision tower is never read)."""
    reason = support_reason(arch, tensors, error)
    return "yes" if reason is None else f"no ({reason})"


def describe(path: str) -> str:
    """A human-readable summary of a GGUF model file (no tensor data is read).

    Values are the ones the engine computes with; where the file leaves one out, names it
    differently or states one the engine overrides (as Ollama's published blobs do), the row
    says so."""
    meta, tensors, lengths, info = _core.read_gguf(path, 512)  # per-layer arrays whole
    arch = meta.get("general.architecture", "?")
    p = f"{arch}."
    shapes = {name: shape for name, _ttype, shape, _nbytes in tensors}
    text_params = vision_params = n_vision = 0
    types: Counter[str] = Counter()
    vision_types: Counter[str] = Counter()
    for name, ttype, shape, _nbytes in tensors:
        count = 1
        for d in shape:
            count *= d
        if name.startswith(VISION_PREFIXES):
            vision_params += count
            n_vision += 1
            vision_types[ttype] += 1
        else:
            text_params += count
            types[ttype] += 1
    runs = _core.architectures()
    cfg, error = effective_config(path) if arch in runs else (None, None)
    lines = ["  Model"]

    def row(label: str, value: Any) -> None:
        lines.append(f"    {label:<28}{value}")

    row("architecture", arch)
    if "general.name" in meta:
        row("name", meta["general.name"])
    if _ollama_markers(meta, list(shapes)) or (
            cfg and 0 < _per_layer_rows(arch, shapes) < cfg.get("n_vocab", 0)):
        row("written by", "Ollama's converter (read as it is; see the notes in brackets)")
    row("parameters", _human(text_params))
    if n_vision:
        audio = any(name.startswith("a.") for name in shapes)
        row("audio and vision towers" if audio else "vision tower",
            f"{n_vision} tensors, {_human(vision_params)} parameters "
            f"({', '.join(f'{t} x{n}' for t, n in sorted(vision_types.items()))}): "
            "not used, never read (text only)")
    row("file size", f"{info['file_size'] / 2**20:.1f} MiB (GGUF v{info['version']})")
    ft = meta.get("general.file_type")
    row("quantization", file_type_name(ft))
    row("tensor types", ", ".join(f"{t} x{n}" for t, n in sorted(types.items())))
    for key, label in [("context_length", "context length"),
                       ("embedding_length", "embedding length"),
                       ("block_count", "layers"), ("feed_forward_length", "feed-forward length"),
                       ("attention.head_count", "attention heads"),
                       ("attention.head_count_kv", "key/value heads"),
                       ("attention.sliding_window", "sliding window")]:
        if p + key in meta:
            value = meta[p + key]
            # A per-layer array (Gemma 3n), read whole only up to 16 entries.
            if isinstance(value, list) and len(set(value)) == 1 and len(value) == lengths[p + key]:
                value = f"{value[0]} (every layer)"
            row(label, value)
    if cfg is not None:
        _describe_config(meta, p, cfg, shapes, row)
    elif error:
        row("loads", f"no: {error}")
    row("supported", _support(arch, tensors, error))
    lines.append("  Tokenizer")
    model = meta.get("tokenizer.ggml.model", "none")
    bpe = model == "gemma4" or (arch == "gemma4" and "tokenizer.ggml.merges" in lengths)
    if bpe:
        # Ollama's converter names Gemma 4's byte-pair vocabulary "llama"; the merges decide.
        row("model", model if model == "gemma4"
            else f"{model} (read as Gemma 4's byte-pair vocabulary: the file lists merges)")
    else:
        row("model", model if model == "llama" or cfg is None
            else f"{model} (read as SentencePiece, as for every {arch} file)")
    if "tokenizer.ggml.tokens" in lengths:
        listed = lengths["tokenizer.ggml.tokens"]
        # The core's tokenizer stops at token_embd's rows (the ids the model can embed).
        n_tokens = min(listed, cfg["n_vocab"]) if cfg is not None else listed
        if n_tokens < listed:
            row("vocabulary", f"{n_tokens} ({listed} listed; the {listed - n_tokens} past "
                "token_embd's rows are multimodal tokens the text model cannot embed)")
        else:
            row("vocabulary", listed)
    for key in ("bos_token_id", "eos_token_id", "eos_token_ids", "unknown_token_id",
                "padding_token_id", "add_bos_token", "add_eos_token", "add_space_prefix"):
        if key == "add_bos_token" and bpe and not meta.get("tokenizer.ggml." + key, True):
            row(key, "True (the file says False; Gemma 4 always adds bos, as llama.cpp does)")
        elif "tokenizer.ggml." + key in meta:
            row(key, meta["tokenizer.ggml." + key])
        elif key == "add_space_prefix" and arch in ("gemma3", "gemma3n"):
            row(key, "False (no key: Gemma's SentencePiece model adds no prefix)")
    row("chat template", "yes" if "tokenizer.chat_template" in meta
        else f"no ({'Gemma 4' if native_tools(arch) else 'Gemma'} turns)")
    # What pyengine sends the model, whatever the file's template says (chat.format_chat).
    row("chat format", "Gemma 4 turns, native tool calls" if native_tools(arch)
        else "Gemma turns, tools as turns")
    return "\n".join(lines)


def describe_source(ref: ModelRef) -> str:
    """Where a model name led: the store it came from, the file, and the Ollama blob's digest."""
    where = {"path": "a file path", "registry": "the project's registry",
             "ollama": "Ollama's store", "package": "a Python package"}.get(ref.source, ref.source)
    lines = ["  Source", f"    {'found in':<28}{where}" + (
        f" as {ref.name}" if ref.source != "path" else "")]
    if ref.tier:
        lines.append(f"    {'tier':<28}{ref.tier}")
    lines.append(f"    {'file':<28}{ref.path}")
    if ref.card:
        lines.append(f"    {'card':<28}{ref.card}")
    if ref.digest:
        lines.append(f"    {'digest':<28}sha256:{ref.digest}")
    return "\n".join(lines)


def _describe_config(meta: dict[str, Any], p: str, cfg: dict[str, Any],
                     shapes: dict[str, list[int]], row: Any) -> None:
    """The rows of describe() whose value the engine may take from elsewhere than the key."""
    def source(value: Any, key: str, alternatives: tuple[str, ...], default: str) -> str:
        if p + key in meta:
            return f"{value}"
        for alt in alternatives:
            if p + alt in meta:
                return f"{value} (from {p + alt})"
        return f"{value} ({default})"

    swa = cfg["layer_is_swa"]
    head_dims = {d for d in cfg.get("layer_head_dim", [cfg["head_dim"]])}
    if len(head_dims) > 1:  # Gemma 4: full layers have larger heads than sliding ones
        full = [d for d, s in zip(cfg["layer_head_dim"], swa) if not s]
        slide = [d for d, s in zip(cfg["layer_head_dim"], swa) if s]
        row("head dimension", f"{full[0]} (full layers), {slide[0]} (sliding layers)")
    else:
        row("head dimension", source(cfg["head_dim"], "attention.key_length", ("head_dim",),
                                     "no key: embedding length / heads"))
    shared = [i for i, src in enumerate(cfg["kv_layer"]) if src != i]
    if shared:
        row("KV shared", f"layers {shared[0]}-{shared[-1]} read earlier layers' keys and values")
    if cfg.get("n_embd_per_layer") and cfg["arch"] != "gemma3n":
        row("per-layer inputs", f"{cfg['n_embd_per_layer']} per layer")
    if cfg.get("n_expert"):
        moe = sum(cfg["layer_is_moe"])
        row("experts", f"{cfg['n_expert_used']} of {cfg['n_expert']} per token (width "
            f"{cfg['n_ff_exp']}) beside the dense FFN, in {moe} of {len(swa)} layers")
    row("rms epsilon", source(f"{cfg['rms_eps']:.0e}", "attention.layer_norm_rms_epsilon", (),
                              "no key: Gemma's value"))
    row("rope base (global)", source(f"{cfg['rope_base']:g}", "rope.freq_base",
                                     ("rope.global.freq_base",), "no key: Gemma's value"))
    row("rope base (local)", source(f"{cfg['rope_base_swa']:g}", "rope.freq_base_swa",
                                    ("rope.local.freq_base", "rope.freq_base_local"),
                                    "no key: Gemma's value"))
    if cfg["rope_scale"] != 1.0:
        factor = f"linear x{1.0 / cfg['rope_scale']:g}"
        if p + "rope.scaling.factor" in meta:
            row("rope scaling", factor)
        else:
            row("rope scaling", f"{factor} (no key: implied for an Ollama blob with a context "
                "of 131072, as Ollama's patch for llama.cpp fills it in)")
    stated = meta.get(p + "final_logit_softcapping")
    if cfg["final_softcap"]:
        row("final softcap", f"{cfg['final_softcap']:g}" + ("" if stated is not None else
                                                           " (fixed for this architecture)"))
    elif stated is not None:
        row("final softcap", f"none (the file's {stated:g} is a default Ollama's converter "
            "filled in; Gemma 3 has none)")
    rows = _per_layer_rows(cfg["arch"], shapes)
    if 0 < rows < cfg["n_vocab"]:
        row("per-layer table", f"{rows} of {cfg['n_vocab']} ids (the ids past it, image and "
            "audio tokens, get a zero per-layer input)")


def cmd_show(args: argparse.Namespace) -> int:
    ref = resolve_model(args.model)
    print(describe(str(ref.path)))
    print(describe_source(ref))
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
    store = ModelStore()
    refs = store.list()
    if args.json:
        print(json.dumps({"models": [_model_json(r) for r in refs]}, indent=2))
        return 0
    if not refs:
        # Module names of the packaged models; pip spells the distributions with dashes.
        packaged = ", ".join(f"{name} (pip install {module.replace('_', '-')})"
                             for name, module in sorted(store.packaged_models.items()))
        print("No models found. Looked in the registry "
              f"{store.registry_dir or '(none)'} (PYENGINE_MODELS) and Ollama's store "
              f"{store.ollama_models or '(none)'} (OLLAMA_MODELS)"
              + (f"; packaged models, once installed: {packaged}." if packaged else "."))
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
    from pyengine.server.serve import parse_model_args, resolve_address, serve

    host, port = resolve_address(args.host, args.port)
    models = parse_model_args(args.models)
    shown = f"[{host}]" if ":" in host else host
    print(f"pyengine {__version__} serving on http://{shown}:{port}", file=sys.stderr)
    for name, path in models.items():
        print(f"  {name}: {path}", file=sys.stderr)
    if not models:
        print("  no models given: requests go to the fallback chain", file=sys.stderr)
    options = dict(n_threads=args.threads, n_ctx=args.ctx, kv_cache_mb=args.kv_cache_mb,
                   max_loaded=args.max_loaded, keep_alive=args.keep_alive,
                   max_queue=args.max_queue, origins=args.origins, api_key=args.api_key,
                   engine_options={"backend": args.backend, "dtype": args.dtype,
                                   "kv_type": args.kv_cache_type,
                                   "prompt_cache": args.prompt_cache,
                                   "prompt_cache_mb": args.prompt_cache_mb,
                                   "speculative": args.speculative,
                                   "num_draft": args.num_draft})
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    model_replicas = {}
    for item in args.model_replicas or []:
        name, sep, count = item.rpartition("=")
        if not sep or not name or not count.isdigit():
            raise ValueError(f"--model-replicas takes NAME=N, got {item!r}")
        model_replicas[name] = int(count)
    autoscale = None
    if args.autoscale:
        lo, sep, hi = args.autoscale.partition(":")
        if not sep or not lo.isdigit() or not hi.isdigit():
            raise ValueError(f"--autoscale takes MIN:MAX, got {args.autoscale!r}")
        autoscale = (int(lo), int(hi))
    if args.replicas == 1 and not args.ray_address and not model_replicas and not autoscale:
        serve(models, host, port, **options)
        return 0
    try:
        from pyengine.cluster.deploy import serve_replicas
    except ImportError as e:
        raise ValueError(f"--replicas and --ray-address need Ray Serve: pip install "
                         f"'pyengine[ray]' ({e})") from None
    if options["n_threads"] is None:  # the replicas of one machine share its cores
        total = args.replicas if len(models) <= 1 else (
            sum(model_replicas.values()) + args.replicas * max(0, len(models) - len(model_replicas)))
        options["n_threads"] = max(1, (os.cpu_count() or 1) // max(1, total))
    print(f"  {args.replicas} replicas on Ray "
          f"({args.ray_address or 'a local cluster'}), routing: {args.router}", file=sys.stderr)
    serve_replicas(models, host, port, args.replicas, ray_address=args.ray_address,
                   policy=args.router, model_replicas=model_replicas, autoscale=autoscale,
                   **options)
    return 0


def cmd_costs(args: argparse.Namespace) -> int:
    from pyengine.gateway.ledger import CostLedger, format_report

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
    from pyengine.bench.ab import main as ab_main

    return ab_main(args)


def warm_prompt_ids(eng: Engine, path: Path) -> list[int]:
    """The prompt a warm-up file holds: a JSON chat (a list of messages, or an object with
    "messages"), rendered as a chat request renders it; any other file: raw text."""
    text = path.read_text("utf-8")
    if path.suffix.lower() == ".json":
        chat = json.loads(text)
        messages = chat.get("messages") if isinstance(chat, dict) else chat
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError(f"{path}: a JSON warm-up file holds a list of chat messages")
        return eng.chat_prompt(messages)
    return eng.tokenize(text)


def cmd_warm(args: argparse.Namespace) -> int:
    """Computes each file's prompt once with keep set: its full KV blocks go to the cache."""
    cache = args.prompt_cache or Config.from_env().prompt_cache
    if not cache:
        raise ValueError("warm needs --prompt-cache DIR (or PYENGINE_PROMPT_CACHE)")
    files = [Path(f) for f in args.files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"no such file: {f}")
    with Engine(args.model, n_threads=args.threads, n_ctx=args.ctx, backend="native",
                kv_type=args.kv_cache_type, prompt_cache=cache,
                prompt_cache_mb=args.prompt_cache_mb) as eng:
        for f in files:
            ids = warm_prompt_ids(eng, f)
            eng.generate(ids, max_tokens=1, temperature=0.0, keep=True)
            print(f"{f}: {len(ids)} tokens", file=sys.stderr)
        st = eng.stats()
        print(f"{eng.prompt_cache}: {st['prompt_cache_files']} blocks, "
              f"{st['prompt_cache_bytes'] / 2**20:.1f} MiB", file=sys.stderr)
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    # Cheap checks first: a bad --ctx or a missing text file fails before the model loads.
    n_ctx = check_n_ctx(args.ctx)
    if args.chunks is not None and args.chunks < 1:
        raise ValueError(f"--chunks must be a positive integer, got {args.chunks}")
    text = read_text_file(args.textfile)
    # One sequence at a time, nothing shared between chunks: each is a fresh sequence.
    eng = Engine(args.model, n_threads=args.threads, n_ctx=n_ctx, max_batch=1,
                 max_batch_tokens=PPL_BATCH, prefix_cache=False, backend=args.backend,
                 dtype=args.dtype, kv_type=args.kv_cache_type)
    try:
        if eng.n_ctx < n_ctx:
            raise ValueError(f"--ctx {n_ctx} exceeds the model's training context "
                             f"({eng.n_ctx} tokens)")
        # The lines below follow llama-perplexity's wording and streams (progress and the
        # final estimate on stderr, the running values on stdout) so runs compare line by line.
        log = sys.stderr
        print("perplexity: tokenizing the input ..", file=log)
        t0 = time.perf_counter()
        tokens = eng.tokenize(text, add_bos=True, special=False)
        print(f"perplexity: tokenization took {(time.perf_counter() - t0) * 1e3:g} ms", file=log)
        bos = special_bos(lambda t, add: eng.tokenize(t, add_bos=add, special=False))
        n_chunks = count_chunks(len(tokens), n_ctx, args.chunks)
        print(f"perplexity: calculating perplexity over {n_chunks} chunks, n_ctx={n_ctx}, "
              f"batch_size={min(n_ctx, PPL_BATCH)}, n_seq=1", file=log)
        t_pass = time.perf_counter()

        def on_chunk(i: int, running: float) -> None:
            if i == 0:
                per_pass = time.perf_counter() - t_pass
                print(f"perplexity: {per_pass:.2f} seconds per pass - ETA "
                      f"{eta_text(per_pass, n_chunks)}", file=log)
            if not args.json:
                sys.stdout.write(f"[{i + 1}]{running:.4f},")
                sys.stdout.flush()

        res = perplexity_of_tokens(eng.logits, tokens, n_ctx, bos, args.chunks, on_chunk)
    finally:
        eng.close()
    if args.json:
        print(json.dumps(dict(res.to_dict(), model=str(eng.path), text_file=args.textfile),
                         indent=2))
        return 0
    sys.stdout.write("\n")
    sys.stdout.flush()
    if res.ppl_error is None:
        print("Unexpected negative standard deviation of log(prob)", file=log)
    else:
        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}", file=log)
    return 0


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="native (C++ core), mlx (mlx-lm; pyengine[mlx]) or auto (MLX on Apple "
                        "silicon when installed); default: PYENGINE_BACKEND, else auto")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "quantized", "q8"),
                   default=None,
                   help="MLX backend: the weights' type (default: the file's; quantized: "
                        "quantized matrices as MLX quantized matrices; q8: its former name)")
    p.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default=None,
                   help="how the KV cache stores keys and values: f16, q8_0 (1.9x the positions "
                        "per MiB) or q4_0 (3.6x); default: PYENGINE_KV_CACHE_TYPE, else "
                        "OLLAMA_KV_CACHE_TYPE, else f16")


def _speculative_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", metavar="ngram|off|MODEL", default=None,
                   help="ngram: decoding sequences draft the tokens that followed their last "
                        "tokens earlier in the prompt or output, checked in the same step (same "
                        "output, sooner where it copies); MODEL: a smaller model of the same "
                        "vocabulary drafts its greedy continuation; off: one token a step; "
                        "default: PYENGINE_SPECULATIVE, else ngram")
    p.add_argument("--num-draft", type=int, default=None, metavar="N",
                   help="most draft tokens a sequence brings to a step (default 8)")


def _prompt_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-cache", metavar="DIR", default=None,
                   help="keep keys and values of prefixes worth keeping (served twice, or sent "
                        "with the keep option) in DIR across restarts (default: "
                        "PYENGINE_PROMPT_CACHE; unset: memory only)")
    p.add_argument("--prompt-cache-mb", type=float, default=None,
                   help="disk budget of the prompt cache per model (default: "
                        "PYENGINE_PROMPT_CACHE_MB, else 4096)")


def _plain(doc: str) -> str:
    """A docstring as help text: reST's literal markup dropped."""
    return doc.replace("``", "").replace("::\n", ":\n")


_THREADS_HELP = "CPU threads (default: every core this process may use)"


class _HelpFormatter(argparse.HelpFormatter):
    """Adds each option's default to its help, unless the help already speaks of it or there
    is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or "default:" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A subcommand: a one-line help in the list, a description and defaults on its own page."""
    return sub.add_parser(name, help=help_text, description=description,
                          formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyengine", formatter_class=_HelpFormatter,
        description="A native inference engine for Gemma models: run, show and list models, "
                    "serve Ollama's and OpenAI's HTTP APIs, measure perplexity, compare "
                    "endpoints. 'pyengine COMMAND --help' describes each command.")
    sub = ap.add_subparsers(dest="command", required=True)

    run = _command(sub, "run", "stream a reply to PROMPT",
                   "Streams a reply to PROMPT: the model's chat turn, or with --raw its "
                   "continuation.")
    run.add_argument("model", help="a model name (gemma3:270m, a registry or Ollama store "
                     "name) or a GGUF path")
    run.add_argument("prompt", help="the user's message (or the text to continue, with --raw)")
    run.add_argument("--raw", action="store_true", help="no chat template: complete PROMPT as is")
    run.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    run.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    run.add_argument("--top-k", type=int, default=40, help="sample from the k likeliest tokens")
    run.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    run.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    run.add_argument("--stop", action="append", help="stop at this text (repeatable)")
    run.add_argument("--format", help='the reply\'s format: "json" (any object), a JSON Schema '
                     "as JSON text, or @FILE holding one (as Ollama's --format json)")
    run.add_argument("--ctx", type=int, default=4096, help="context length in tokens")
    run.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    _backend_arguments(run)
    _speculative_arguments(run)
    run.add_argument("--verbose", action="store_true", help="print timings to stderr")
    run.set_defaults(func=cmd_run)

    show = _command(sub, "show", "print a model's architecture, sizes and tokenizer",
                    "Prints a model's architecture, sizes, weight types and tokenizer, and "
                    "whether this engine runs it (no tensor data is read).")
    show.add_argument("model", help="a model name or a GGUF path")
    show.set_defaults(func=cmd_show)

    serve = _command(sub, "serve", "serve models over Ollama's and OpenAI's HTTP APIs",
                     "Serves MODELs over Ollama's and OpenAI's HTTP APIs; requests for other "
                     "models go to the fallback chain (a real Ollama server, paid APIs when "
                     "enabled).")
    serve.add_argument("models", nargs="*", metavar="MODEL",
                       help="a store name (gemma3:270m), NAME=PATH or NAME=STORE_NAME, or a GGUF "
                       "path (named by its file stem)")
    serve.add_argument("--host", help="address to listen on (default: from PYENGINE_HOST, "
                       "as host:port, http://host:port or :port; else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: from PYENGINE_HOST; else 11435)")
    serve.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    serve.add_argument("--ctx", type=int, default=4096, help="context of a request that sets none")
    _backend_arguments(serve)
    _speculative_arguments(serve)
    serve.add_argument("--kv-cache-mb", type=float, default=None,
                       help="KV cache of each loaded model (default MAX_CACHE_SIZE_MB or 2048)")
    _prompt_cache_arguments(serve)
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
    serve.add_argument("--replicas", type=int, default=1,
                       help="servers behind one address, on Ray Serve (pyengine[ray]); each has "
                            "its own engines and KV cache, and requests go to the replica whose "
                            "cache holds their prompt's prefix (default 1: no Ray)")
    serve.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. ray://head:10001) instead of starting "
                            "a local one")
    serve.add_argument("--model-replicas", action="append", metavar="NAME=N",
                       help="with several models, each has its own replicas (a deployment per "
                            "model, so per tier): N of them for NAME, a model or a tier (fast, "
                            "primary, alternative, quality); others get --replicas")
    serve.add_argument("--autoscale", metavar="MIN:MAX",
                       help="let Ray Serve scale each deployment between MIN and MAX replicas "
                            "by load instead of fixed counts")
    serve.add_argument("--router", choices=("prefix", "default"), default="prefix",
                       help="how replicas are chosen: by prompt prefix (default), or by Ray "
                            "Serve's own router (power of two choices), for comparison")
    serve.set_defaults(func=cmd_serve)

    ls = _command(sub, "list", "list the models available here (registry and Ollama store)",
                  "Lists the models of the registry, Ollama's store and the packaged models.")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    costs = _command(sub, "costs", "report the cost ledger: local vs paid calls and spend",
                     "Reports the cost ledger: local and paid calls, tokens and spend.")
    costs.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    costs.add_argument("--ledger", help="ledger file (default: PYENGINE_LEDGER or "
                       "~/.pyengine/ledger.sqlite)")
    costs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    costs.set_defaults(func=cmd_costs)

    ppl = _command(sub, "perplexity", "perplexity of a model on a text file, computed as "
                   "llama.cpp's llama-perplexity computes it",
                   "Perplexity of a model on a text file, computed as llama.cpp's "
                   "llama-perplexity computes it.")
    ppl.add_argument("model", help="GGUF path or model name")
    ppl.add_argument("textfile", help="UTF-8 text (one trailing newline is dropped)")
    ppl.add_argument("--ctx", type=int, default=DEFAULT_N_CTX,
                     help="tokens per chunk; the second half of each is scored (default 512, "
                     "as llama-perplexity's -c)")
    ppl.add_argument("--chunks", type=int, default=None,
                     help="evaluate at most this many chunks (default: every whole chunk)")
    ppl.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    _backend_arguments(ppl)
    ppl.add_argument("--json", action="store_true",
                     help="print the result as JSON on stdout instead of the running values")
    ppl.set_defaults(func=cmd_perplexity)

    warm = _command(sub, "warm", "compute prompts once and keep their KV blocks on disk",
                    "Computes each FILE's prompt once and writes its full KV blocks to the "
                    "prompt cache, so that servers using the same --prompt-cache start with "
                    "them: a system prompt, a judge's rubric, few-shot examples. A .json FILE "
                    "holds chat messages (rendered as a chat request renders them); any other "
                    "FILE is raw text.")
    warm.add_argument("model", help="a model name or a GGUF path")
    warm.add_argument("files", nargs="+", metavar="FILE", help="prompt files")
    warm.add_argument("--ctx", type=int, default=4096, help="context length in tokens")
    warm.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    warm.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default=None,
                      help="the KV cache type of the servers that will read the blocks")
    _prompt_cache_arguments(warm)
    warm.set_defaults(func=cmd_warm)

    from pyengine.bench import ab as ab_module  # standard library only: cheap to import

    ab = sub.add_parser("ab", help="compare the speed of two chat endpoints (Ollama/OpenAI)",
                        description=_plain(ab_module.__doc__ or ""),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ab_module.add_arguments(ab)
    ab.set_defaults(func=cmd_ab)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (``pyengine show M | head``): nothing of ours failed. Python
        # would report the pipe again when it flushes stdout at exit, so stdout now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a writer stopped by SIGPIPE
    except (PyEngineError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
