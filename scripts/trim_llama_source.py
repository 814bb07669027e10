#!/usr/bin/env python3
"""A trimmed copy of the pinned llama.cpp source, small enough to carry to a machine without
network (the sdist is 76 MB; what building llama-server needs packs to a few MB).

    python scripts/trim_llama_source.py OUT.tar.gz

Leaves out the vocabulary files, docs, tests, examples, benchmarks, Python converters and the
GPU backends other than CUDA. Unpack the archive in the folder llama_server.py builds
in (bench_out/llama-server-cuda/ for bench_batch.py --cuda): it holds
llama_cpp_python-VERSION/vendor/llama.cpp, where the build looks before downloading.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS_DIR))

import llama_server as ls  # noqa: E402

# Top-level entries of llama.cpp that building llama-server (CPU or CUDA) does not read.
SKIP_TOP = {"models", "docs", "tests", "examples", "benches", "media", "gguf-py", "conversion",
            "pocs", "requirements", "skills", "scripts", "grammars", "ci", "app", ".github",
            ".devops"}
SKIP_BACKENDS = {"ggml-metal", "ggml-vulkan", "ggml-sycl", "ggml-opencl", "ggml-hexagon",
                 "ggml-cann", "ggml-musa", "ggml-et", "ggml-webgpu", "ggml-zdnn", "ggml-hip"}


def keep(rel: Path) -> bool:
    """Whether a path under llama.cpp (relative to it) goes into the archive."""
    parts = rel.parts
    if not parts:
        return True
    if parts[0] in SKIP_TOP:
        return False
    if parts[:2] == ("ggml", "src") and len(parts) > 2 and parts[2] in SKIP_BACKENDS:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the .tar.gz to write")
    ap.add_argument("--cache", type=Path, default=ls.DEFAULT_CACHE,
                    help="where the sdist is (downloaded there when missing)")
    args = ap.parse_args()
    version = ls.pinned_version()
    src = ls._fetch_source(args.cache, version)
    root = Path(f"llama_cpp_python-{version}") / "vendor" / "llama.cpp"
    n = 0
    with tarfile.open(args.out, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_file() and not path.is_symlink() and all(
                    keep(Path(*rel.parts[:i])) for i in range(1, len(rel.parts) + 1)):
                tar.add(path, arcname=str(root / rel))
                n += 1
    print(f"wrote {args.out}: {n} files, {args.out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
