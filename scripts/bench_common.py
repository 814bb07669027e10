"""Helpers shared by the benchmark scripts: machine facts, model files, prompts, probes, workers.

Benchmarks run each engine in its own subprocess (a re-invocation of the script with ``--worker``)
so that load time and peak RSS belong to one engine only; ``run_worker`` and ``worker_output`` are
the two ends of that pipe.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPTS_DIR.parent
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
FIRST_NORMAL_ID = 300  # Gemma vocabularies: control, unused and byte tokens come first
BOS_ID = 2


# ------------------------------------------------------------------------------------ machine

def machine_info(n_threads: int) -> dict[str, Any]:
    """CPU model, core counts and the ISA extensions the kernels may use."""
    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa": {f: f in flags for f in ISA_FLAGS},
        "threads": n_threads,
        "os": platform.platform(),
    }


def versions() -> dict[str, Any]:
    """Versions of everything whose speed is measured, and the checkout's commit."""
    out: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    for module, key in (("pyengine", "pyengine"), ("llama_cpp", "llama_cpp_python")):
        try:
            out[key] = __import__(module).__version__
        except Exception:  # a missing peer must not stop the other engine's numbers
            out[key] = None
    try:
        git = ["git", "-C", str(REPO_DIR)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        out["git"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["git"] = None
    return out


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- models, prompts

def ensure_model(model_dir: Path, preset: str, dtype: str) -> Path:
    """The cached synthetic GGUF of (preset, dtype), written on first use.

    dtype is one of make_model's (f32, f16, bf16, q8_0), or any ftype llama-quantize takes
    (q4_k_m, q4_0, iq4_xs, ...): then the preset's F16 file is written first and quantized by
    llama.cpp's own quantizer (scripts/quantize_model.py), as Ollama's files are made. Written
    under a temporary name and renamed, so an interrupted write is never reused.
    """
    sys.path.insert(0, str(SCRIPTS_DIR))
    from make_model import DTYPES, make_config, write_model

    path = model_dir / f"{make_config(preset).name}-{dtype}.gguf"  # e.g. synthetic-gemma3-1b-q8_0
    if not path.exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".gguf.tmp")
        t0 = time.perf_counter()
        if dtype in DTYPES:
            print(f"writing {path.name} ...", file=sys.stderr, flush=True)
            write_model(tmp, preset, dtype)
        else:
            from quantize_model import quantize

            source = ensure_model(model_dir, preset, "f16")
            print(f"quantizing {source.name} to {dtype} ...", file=sys.stderr, flush=True)
            quantize(source, tmp, dtype)
        tmp.rename(path)
        print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return path


def n_vocab_of(path: Path) -> int:
    """Vocabulary size from the GGUF token list (no model is built)."""
    from pyengine import _core

    _, _, lengths, _ = _core.read_gguf(str(path), 0)
    return int(lengths["tokenizer.ggml.tokens"])


def random_prompts(n_prompts: int, n_tokens: int, n_vocab: int, seed: int = 0) -> list[list[int]]:
    """Seeded prompts of BOS + random normal-token ids, one per repetition.

    Distinct prompts keep an engine's prefix cache from skipping work in later repetitions.
    """
    rng = np.random.default_rng(seed)
    return [[BOS_ID] + rng.integers(FIRST_NORMAL_ID, n_vocab, n_tokens - 1).tolist()
            for _ in range(n_prompts)]


# ------------------------------------------------------------------------------------- probes

def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights one decode step reads.

    Every tensor is read in full, except the lookup tables of the architecture's table (kind
    "table": the token embeddings, Gemma 3n's per-layer embeddings), of which a step reads one
    row; with tied embeddings (no output matrix) the output projection reads the token
    embeddings in full. Of a mixture of experts' stacked expert matrices (outer dimension
    n_expert) a step reads the experts its token uses: expert_used_count of expert_count. The KV
    cache is left out: it depends on the position and is small next to the weights at
    benchmark lengths.
    """
    from pyengine import _core

    meta, tensors, _, _ = _core.read_gguf(str(path), 0)
    names = {name for name, *_ in tensors}
    table = _core.architecture_tensors(meta["general.architecture"])
    # The first entry of every table is the token embedding; the optional one the output.
    tied = not any(s["optional"] and s["name"] in names for s in table)
    row_read = {s["name"] for s in table if s["kind"] == "table"}
    if tied:
        row_read.discard(table[0]["name"])
    experts = {s["name"] for s in table if len(s["ne"]) == 3 and s["ne"][-1] == "n_expert"}
    arch = meta["general.architecture"]
    used = meta.get(f"{arch}.expert_used_count", 0)
    share = used / meta[f"{arch}.expert_count"] if used else 1.0
    total = 0
    for name, _type, shape, nbytes in tensors:
        per_layer = name.split(".", 2)[-1] if name.startswith("blk.") else name
        if per_layer in row_read:
            total += nbytes // shape[-1]  # shape: GGUF order
        else:
            total += int(nbytes * share) if per_layer in experts else nbytes
    return total


def read_bandwidth_gbs(n_threads: int, n_bytes: int = 1 << 30, runs: int = 5) -> tuple[float, str]:
    """The machine's memory read bandwidth in GB/s with n_threads readers, and the probe's name.

    Prefers the native probe when the core has one; otherwise each of n_threads threads reduces
    its own slice of a buffer much larger than the caches (numpy releases the GIL in reductions).
    The best run is kept: slower ones measure interference, not the memory system.
    """
    with contextlib.suppress(ImportError, AttributeError):
        from pyengine import _core

        return float(_core.memory_read_bandwidth(n_bytes, n_threads)), "pyengine native"
    buf = np.ones(n_bytes // 4, dtype=np.float32)  # ones(), not empty(): pages must be resident
    parts = np.array_split(buf, n_threads)
    best = 0.0
    with ThreadPoolExecutor(n_threads) as pool:
        for _ in range(runs):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))  # max: SIMD and no temporaries, so memory-bound
            best = max(best, n_bytes / (time.perf_counter() - t0) / 1e9)
    return best, "numpy max"


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (reported in kB) in MiB; NaN where unavailable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM first: ru_maxrss survives execve, so a worker would report its parent's peak (the
    bandwidth probe's buffer) whenever that was larger than its own.
    """
    peak = _status_mib("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ workers

@contextlib.contextmanager
def worker_output() -> Iterator[Any]:
    """Yields a text stream for the worker's JSON result; everything else written to fd 1 (native
    libraries log there too) is sent to stderr so the result stays parseable."""
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    try:
        with os.fdopen(saved, "w") as out:
            yield out
    finally:
        sys.stdout.flush()


def run_worker(script: Path, args: Sequence[str], payload: dict[str, Any]) -> dict[str, Any]:
    """Runs ``script --worker args`` with payload as JSON on stdin; returns its JSON result."""
    proc = subprocess.run([sys.executable, str(script), "--worker", *args],
                          input=json.dumps(payload), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed ({proc.returncode}):\n"
                           + proc.stderr[-4000:])
    return json.loads(proc.stdout)


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]  # drop NaN
    return statistics.median(finite) if finite else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
