#!/usr/bin/env python3
"""Quantize a GGUF file with llama.cpp's own quantizer, or write and quantize a synthetic preset.

The quantizer is ``llama_model_quantize`` from the libllama of the pinned llama-cpp-python: the very
function the ``llama-quantize`` tool calls, so files come out exactly as llama.cpp writes them
(its per-tensor type mix, its fallbacks for rows that are not a multiple of a block) and no
separate llama.cpp build is needed. No importance matrix is used.

    python scripts/quantize_model.py model-f32.gguf --ftype Q4_K_M -o model-q4_k_m.gguf
        [--pure] [--token-embedding-type q8_0] [--output-tensor-type q6_k] [--types]
    python scripts/quantize_model.py --preset 1b --ftype Q4_K_M -o bench_models/1b-q4_k_m.gguf

The second form writes the preset's source model (scripts/make_model.py, F16 by default) into a
temporary file next to the output, quantizes it and deletes it.

From Python: ``from quantize_model import quantize; quantize("in.gguf", "out.gguf", "Q4_K_M")``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

# ftype names as llama-quantize spells them (matched case-insensitively, as it does) -> the
# llama_ftype enumerator of llama.h. Q3_K, Q4_K and Q5_K are llama-quantize's aliases.
FTYPES: dict[str, str] = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "Q5_0": "MOSTLY_Q5_0",
    "Q5_1": "MOSTLY_Q5_1",
    "Q2_K": "MOSTLY_Q2_K",
    # llama.cpp refuses Q2_K_S without an importance matrix once any tensor really gets Q2_K
    # (rows of a multiple of 256); where every row falls back to Q4_0 it succeeds.
    "Q2_K_S": "MOSTLY_Q2_K_S",
    "Q3_K_S": "MOSTLY_Q3_K_S",
    "Q3_K_M": "MOSTLY_Q3_K_M",
    "Q3_K_L": "MOSTLY_Q3_K_L",
    "Q3_K": "MOSTLY_Q3_K_M",
    "Q4_K_S": "MOSTLY_Q4_K_S",
    "Q4_K_M": "MOSTLY_Q4_K_M",
    "Q4_K": "MOSTLY_Q4_K_M",
    "Q5_K_S": "MOSTLY_Q5_K_S",
    "Q5_K_M": "MOSTLY_Q5_K_M",
    "Q5_K": "MOSTLY_Q5_K_M",
    "Q6_K": "MOSTLY_Q6_K",
    "IQ4_NL": "MOSTLY_IQ4_NL",
    "IQ4_XS": "MOSTLY_IQ4_XS",
}
SOURCE_DTYPES = ("f16", "f32")  # what the preset mode writes before quantizing


class QuantizeError(RuntimeError):
    """llama.cpp's quantizer failed; the message carries its own reason."""


def _ftype_enum(ftype: str) -> str:
    """The llama_ftype enumerator name for an ftype name, or ValueError."""
    key = ftype.upper() if isinstance(ftype, str) else ftype
    if key not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; expected one of {', '.join(FTYPES)}")
    return "LLAMA_FTYPE_" + FTYPES[key]


def _ggml_type(name: str | None, what: str) -> int | None:
    """The ggml type id of a tensor type name such as 'q8_0' or 'Q6_K' (None stays None)."""
    if name is None:
        return None
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        names = ", ".join(t.name for t in gguf.GGMLQuantizationType)
        raise ValueError(f"unknown {what} {name!r}; expected a ggml type: {names}") from None


def _check_paths(src: Path, dst: Path) -> None:
    """Clear errors for what llama.cpp would report obscurely (or not at all)."""
    if not src.is_file():
        raise FileNotFoundError(f"source model {src} does not exist or is not a file")
    with open(src, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"source model {src} is not a GGUF file (no GGUF magic)")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {dst.parent} does not exist")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the source file; write to another path")


def _scratch_path(dst: Path, suffix: str) -> Path:
    """A fresh hidden name next to dst; the file is left for its writer to create (mkstemp's
    would keep mode 0600 where a quantized model should get the usual permissions)."""
    return dst.parent / f".{dst.name}.{uuid.uuid4().hex[:12]}{suffix}"


def quantize(src: str | Path, dst: str | Path, ftype: str, *, pure: bool = False,
             token_embedding_type: str | None = None, output_tensor_type: str | None = None,
             nthread: int = 0, verbose: bool = False) -> Path:
    """Quantize the GGUF file src into dst with llama.cpp's quantizer; return dst.

    ftype: a name as llama-quantize spells it (see FTYPES), case-insensitive. pure: every
    quantizable tensor in the ftype's own type instead of llama.cpp's mix (its fallback for rows
    that are not a multiple of the block still applies). token_embedding_type /
    output_tensor_type: a ggml type name (e.g. "q8_0") for those tensors, as llama-quantize's
    --token-embedding-type / --output-tensor-type. nthread: 0 lets llama.cpp use every core.
    verbose: pass llama.cpp's log through to stderr (it is captured and dropped otherwise).

    llama.cpp runs in a child process, so its log never reaches stdout and a hard abort in it
    cannot take the caller down. dst appears only once complete. Raises ValueError for bad
    names or arguments, FileNotFoundError for missing paths, QuantizeError when llama.cpp fails.
    """
    src, dst = Path(src), Path(dst)
    spec = {
        "ftype": _ftype_enum(ftype),
        "pure": bool(pure),
        "token_embedding_type": _ggml_type(token_embedding_type, "token_embedding_type"),
        "output_tensor_type": _ggml_type(output_tensor_type, "output_tensor_type"),
        "nthread": int(nthread),
    }
    _check_paths(src, dst)
    tmp = _scratch_path(dst, ".part")
    try:
        spec.update(src=str(src), dst=str(tmp))
        child = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                 "import quantize_model; sys.exit(quantize_model._quantize_in_process())")
        proc = subprocess.run([sys.executable, "-c", child, json.dumps(spec)],
                              stdout=subprocess.PIPE,
                              stderr=None if verbose else subprocess.PIPE,
                              text=True, errors="replace", check=False)
        if proc.returncode != 0:
            raise QuantizeError(f"llama.cpp could not quantize {src} to {ftype}: "
                                f"{_failure_reason(proc.returncode, proc.stderr)}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _failure_reason(returncode: int, log: str | None) -> str:
    """llama.cpp's own reason from its log ('failed to quantize: ...', with the errors logged
    before it, such as the GGUF reader's), else how the child ended and the log's tail."""
    if log is None:
        return f"exit status {returncode}; see llama.cpp's log above"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if "failed to quantize:" in lines[i]:
            reason = lines[i].split("failed to quantize:", 1)[1].strip()
            if "imatrix" in reason:
                reason += " (this ftype needs an importance matrix, which this tool does not use)"
            before = [line for line in lines[:i] if "fail" in line.lower()
                      or "error" in line.lower()][-3:]
            return reason + (f" [{'; '.join(before)}]" if before else "")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    return f"{how}; log tail: {' | '.join(lines[-5:]) or '(empty)'}"


def _quantize_in_process() -> int:
    """Child-process side of quantize(): call llama_model_quantize with the spec in argv[1]."""
    import ctypes

    import llama_cpp

    spec = json.loads(sys.argv[1])
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, spec["ftype"])
    params.pure = spec["pure"]
    params.nthread = spec["nthread"]
    if spec["token_embedding_type"] is not None:
        params.token_embedding_type = spec["token_embedding_type"]
    if spec["output_tensor_type"] is not None:
        params.output_tensor_type = spec["output_tensor_type"]
    rc = llama_cpp.llama_model_quantize(spec["src"].encode(), spec["dst"].encode(),
                                        ctypes.byref(params))
    return int(rc != 0)


def tensor_type_counts(path: str | Path) -> Counter[str]:
    """How many tensors of each ggml type a GGUF file holds, read with gguf-py."""
    import gguf

    return Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)


def quantize_preset(preset: str, dst: str | Path, ftype: str, *, source_dtype: str = "f16",
                    seed: int = 0, **kwargs) -> dict[str, float]:
    """Write a make_model preset in source_dtype next to dst, quantize it into dst, delete it.

    kwargs go to quantize(). Returns the seconds spent writing and quantizing, and the sizes.
    """
    from make_model import write_model  # sibling script; only this mode needs it

    if source_dtype not in SOURCE_DTYPES:
        raise ValueError(f"source_dtype must be one of {SOURCE_DTYPES}, got {source_dtype!r}")
    _ftype_enum(ftype)  # a bad name fails before minutes of writing
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {dst.parent} does not exist")
    src = _scratch_path(dst, f".{source_dtype}.gguf")
    try:
        t0 = time.perf_counter()
        write_model(src, preset, source_dtype, seed)
        t1 = time.perf_counter()
        quantize(src, dst, ftype, **kwargs)
        t2 = time.perf_counter()
        source_bytes = src.stat().st_size
    finally:
        src.unlink(missing_ok=True)
    return {"write_s": t1 - t0, "quantize_s": t2 - t1, "source_bytes": source_bytes,
            "output_bytes": dst.stat().st_size}


def _format_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from make_model import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="GGUF file to quantize (or give --preset)")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="write this synthetic preset as the source (deleted afterwards)")
    ap.add_argument("--source-dtype", default="f16", choices=SOURCE_DTYPES,
                    help="dtype of the preset's source file (default f16)")
    ap.add_argument("--seed", type=int, default=0, help="weights seed of the preset")
    ap.add_argument("--ftype", required=True, type=str.upper, metavar="FTYPE",
                    help=f"one of: {', '.join(FTYPES)}")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--pure", action="store_true",
                    help="every quantizable tensor in the ftype's own type (no mix)")
    ap.add_argument("--token-embedding-type", metavar="TYPE")
    ap.add_argument("--output-tensor-type", metavar="TYPE")
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    ap.add_argument("--verbose", action="store_true", help="show llama.cpp's log on stderr")
    ap.add_argument("--types", action="store_true",
                    help="count the output's tensor types (gguf-py; slow on 262k vocabularies)")
    args = ap.parse_args(argv)
    if (args.source is None) == (args.preset is None):
        ap.error("give either a source file or --preset, not both")
    out = Path(args.output)
    kwargs = {"pure": args.pure, "token_embedding_type": args.token_embedding_type,
              "output_tensor_type": args.output_tensor_type, "nthread": args.threads,
              "verbose": args.verbose}
    try:
        if args.preset:
            out.parent.mkdir(parents=True, exist_ok=True)
            info = quantize_preset(args.preset, out, args.ftype, source_dtype=args.source_dtype,
                                   seed=args.seed, **kwargs)
            print(f"wrote the {args.preset} source ({args.source_dtype}, "
                  f"{info['source_bytes'] / 2**20:.1f} MiB) in {info['write_s']:.1f} s, "
                  f"quantized it in {info['quantize_s']:.1f} s")
        else:
            t0 = time.perf_counter()
            quantize(args.source, out, args.ftype, **kwargs)
            print(f"quantized in {time.perf_counter() - t0:.1f} s")
    except (ValueError, FileNotFoundError, QuantizeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = (f"{out}: {args.ftype}{' (pure)' if args.pure else ''}, "
               f"{out.stat().st_size / 2**20:.1f} MiB")
    if args.types:
        summary += f"; tensor types: {_format_counts(tensor_type_counts(out))}"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
