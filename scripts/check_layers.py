#!/usr/bin/env python3
"""Checks that no #include in csrc/ points up the stack, and that no module of pyengine/ imports
itself through others (an import cycle) at import time.

The native core is layered; a folder may include its own files and those of the folders below
it, never those above (nor test code, which lives under tests/):

    core       GGUF reading, the configuration, errors, the thread pool
    quant, kv  weight types and kernels; the paged KV cache          (side by side: neither includes the other)
    model      the model interface, its batch, the CPU forward passes
    cuda       the CUDA backend
    runtime    tokenizer, sampler, scheduler, engine
    bindings   the Python module

    python scripts/check_layers.py [CSRC [PACKAGE]]   # exit 1, one line per include that
                                                       # points up and per import cycle
"""

from __future__ import annotations

import ast
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


def module_imports(package: Path) -> dict[str, set[str]]:
    """Each module of the package (dotted names) -> the package's modules it imports when it
    is imported (imports inside functions run later and cannot form a cycle at import time)."""
    root = package.parent
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Try):  # guarded imports still run at import time
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                        targets.append(sub.module)
            for t in targets:
                # The module itself, and the packages on its way (their __init__ runs too).
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    cand = ".".join(parts[:i])
                    if cand in modules and cand != name and not name.startswith(cand + "."):
                        deps.add(cand)
        graph[name] = deps
    return graph


def import_cycles(package: Path) -> list[str]:
    graph = module_imports(package)
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return [f"import cycle: {c}" for c in cycles]


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent.parent
    csrc = Path(argv[1]) if len(argv) > 1 else here / "csrc"
    package = Path(argv[2]) if len(argv) > 2 else here / "pyengine"
    bad = violations(csrc) + import_cycles(package)
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
