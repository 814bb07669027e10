"""The native core's layers: no #include in csrc/ points up the stack (scripts/check_layers.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_layers.py"


def check(csrc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(csrc)], capture_output=True,
                          text=True, timeout=60)


def test_no_include_points_up_the_stack():
    proc = check(ROOT / "csrc")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


def test_the_check_finds_what_points_up(tmp_path):
    for folder, text in {
        "core": '#include "core/errors.h"\n#include "thread_pool.h"\n',
        "quant": '#include "core/errors.h"\n#include "runtime/sampler.h"\n',
        "kv": '#include "quant/formats.h"\n',
        "model": '  #  include "kv/kv_cache.h"\n#include "cuda/device.h"\n',
        "runtime": '#include "model/model.h"\n#include "tests/cuda/emulator/emulator.h"\n',
        "elsewhere": "",
    }.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.cc").write_text(text)
    (tmp_path / "core" / "thread_pool.h").write_text("")
    found = sorted(line.split(": ", 1)[1] for line in check(tmp_path).stdout.splitlines())
    assert found == sorted([
        "folder 'elsewhere' has no place in the layers (see this script)",
        "includes cuda/device.h (cuda is above it)",
        "includes quant/formats.h (quant is above it)",
        "includes runtime/sampler.h (runtime is above it)",
        "includes tests/cuda/emulator/emulator.h (tests is outside csrc/)",
    ])


def test_the_check_finds_import_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n\ndef later():\n    import pkg.c\n")
    (pkg / "c.py").write_text("from pkg.sub.b import later\n")  # imports b; b imports c late
    (tmp_path / "csrc").mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "csrc"), str(pkg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["import cycle: pkg.a -> pkg.sub.b -> pkg.a"]
