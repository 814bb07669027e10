"""One x86-64 build runs on every x86-64 CPU: outside the dispatched kernel files (compiled with
AVX2, AVX-512 or AMX flags, called only when the CPU has them) no object of the native core holds an
AVX instruction, except functions named for their level (a `target` attribute, checked at run
time), and the dispatched files define no weak symbol: the linker could keep their copy of a
shared inline function for every caller, wide instructions and all."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISPATCHED = {"kernels_avx2.cc.o", "lanes_avx2.cc.o", "kernels_avx512.cc.o", "lanes_avx512.cc.o",
              "kernels_amx.cc.o"}
# A VEX/EVEX-encoded instruction (every AVX mnemonic starts with v), or a wide or mask register.
AVX = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+\b|.*%[yz]mm\d|.*%k[0-7]\b)")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump"),
]


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> list[Path]:
    """The core's and the extension's objects: those of the installed build (pip builds in
    build/<wheel tag>, pyproject.toml), or else a build of the core made here."""
    found = sorted(ROOT.glob("build/cp*/CMakeFiles/*.dir/**/*.o"))
    found = [p for p in found if "CompilerId" not in str(p)]
    if not found:
        out = tmp_path_factory.mktemp("core")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(out), "-DPYENGINE_PYTHON=OFF",
                        "-DPYENGINE_CUDA=OFF"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(out), "--target", "pyengine_core"], check=True,
                       capture_output=True)
        found = sorted(out.glob("CMakeFiles/*.dir/**/*.o"))
    assert any(p.name in DISPATCHED for p in found) and len(found) > 20, found
    return found


def wide_functions(obj: Path) -> dict[str, str]:
    """Functions of an object that hold an AVX instruction, with the first such instruction."""
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(obj)], check=True,
                          capture_output=True, text=True).stdout
    out: dict[str, str] = {}
    name = "?"
    for line in text.splitlines():
        if m := FUNCTION.match(line):
            name = m.group(1)
        elif name not in out and AVX.match(line):
            out[name] = line.strip()
    return out


def test_no_avx_outside_the_dispatched_kernels(objects):
    checked = 0
    for obj in objects:
        if obj.name in DISPATCHED:
            assert wide_functions(obj), obj  # the check sees AVX where there is some
            continue
        stray = {f: i for f, i in wide_functions(obj).items()
                 if "Avx2" not in f and "Avx512" not in f}
        assert not stray, (obj.name, stray)
        checked += 1
    assert checked > 20


def test_dispatched_objects_define_no_weak_symbols(objects):
    for obj in objects:
        if obj.name not in DISPATCHED:
            continue
        syms = subprocess.run(["nm", "-C", "--defined-only", str(obj)], check=True,
                              capture_output=True, text=True).stdout.splitlines()
        weak = [s for s in syms if re.match(r"^[0-9a-f]* [WVu] ", s)]
        assert not weak, (obj.name, weak[:5])
