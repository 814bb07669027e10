#!/usr/bin/env python3
"""Checks that no #include in csrc/ points up the stack.

The native core is layered; a folder may include its own files and those of the folders below
it, never those above (nor test code, which lives under tests/):

    core       GGUF reading, the configuration, errors, the thread pool
    quant, kv  weight types and kernels; the paged KV cache          (side by side: neither includes the other)
    model      the model interface, its batch, the CPU forward passes
    cuda       the CUDA backend
    runtime    tokenizer, sampler, scheduler, engine
    bindings   the Python module

    python scripts/check_layers.py [CSRC]   # exit 1 and one line per include that points up
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Each folder with the folders it may include (its own included).
ALLOWED = {
    "core": set(),
    "quant": {"core"},
    "kv": {"core"},
    "model": {"core", "quant", "kv"},
    "cuda": {"core", "quant", "kv", "model"},
    "runtime": {"core", "quant", "kv", "model", "cuda"},
    "bindings": {"core", "quant", "kv", "model", "cuda", "runtime"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCES = (".h", ".cc", ".cu", ".cuh")


def violations(csrc: Path) -> list[str]:
    found = []
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in SOURCES):
        layer = path.relative_to(csrc).parts[0]
        if layer not in ALLOWED:
            found.append(f"{path}: folder {layer!r} has no place in the layers (see this script)")
            continue
        for target in INCLUDE.findall(path.read_text(encoding="utf-8", errors="replace")):
            parts = Path(target).parts
            if len(parts) == 1 and (path.parent / target).is_file():
                continue  # a file of its own folder
            dep = parts[0]
            if dep != layer and dep not in ALLOWED[layer]:
                why = "above it" if dep in ALLOWED else "outside csrc/"
                found.append(f"{path}: includes {target} ({dep} is {why})")
    return found


def main(argv: list[str]) -> int:
    csrc = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "csrc"
    bad = violations(csrc)
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
