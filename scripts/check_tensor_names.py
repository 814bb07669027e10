#!/usr/bin/env python3
"""Checks that each architecture's tensors are declared once: every tensor name of the native
core's tables (``_core.architecture_tensors``) appears as a string literal in at most one C++
file (the table itself) and one Python file (the synthetic writer's weight rules), over csrc/,
pyengine/ and scripts/. Everything else reads the tables. A line naming another model's tensor
of the same name (the vision tower's) says so with "(check_tensor_names)".

    python scripts/check_tensor_names.py     # exit status 1 and one line per offence
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPP = (".cc", ".h", ".cu", ".cuh")
STRING = re.compile(r'"([^"\n\\]*)"|\'([^\'\n\\]*)\'')


def table_names() -> set[str]:
    """Every tensor name the tables declare, without '.weight' (and without 'blk.N.')."""
    from pyengine import _core

    return {spec["name"].removesuffix(".weight")
            for arch in _core.architectures() for spec in _core.architecture_tensors(arch)}


def mentions(text: str, names: set[str]) -> set[str]:
    """Names written in string literals of ``text``: as 'name.weight' anywhere in a literal, or a
    literal that is the bare name (when it is distinctive enough to be one: it has a '_')."""
    found = set()
    text = "\n".join(line for line in text.splitlines() if "(check_tensor_names)" not in line)
    for m in STRING.finditer(text):
        literal = m.group(1) if m.group(1) is not None else m.group(2)
        for name in names:
            if re.search(rf"(^|[^A-Za-z0-9_]){re.escape(name)}\.weight", literal) or (
                    "_" in name and literal == name):
                found.add(name)
    return found


def offences(root: Path = ROOT) -> list[str]:
    names = table_names()
    where: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"C++": set(), "Python": set()})
    for folder in ("csrc", "pyengine", "scripts"):
        for path in sorted((root / folder).rglob("*")):
            lang = "C++" if path.suffix in CPP else "Python" if path.suffix == ".py" else None
            if lang is None or not path.is_file():
                continue
            for name in mentions(path.read_text(errors="replace"), names):
                where[name][lang].add(str(path.relative_to(root)))
    out = []
    for name in sorted(where):
        for lang, files in where[name].items():
            if len(files) > 1:
                out.append(f"tensor '{name}' is named in {len(files)} {lang} files: "
                           f"{', '.join(sorted(files))}")
    return out


def main() -> int:
    found = offences()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
