"""The Windows build of the core: cross-compiled with MinGW-w64 and run under Wine
(scripts/windows_check.sh). Every kernel level this CPU has against exact arithmetic and the
scalar reference, and greedy tokens read through the Windows file mapping equal to Linux's on a
tiny model and the real Gemma 3 270M."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyengine import Engine, _core

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "windows_check.sh"
REAL_PROMPT = [2, 818, 5279, 529, 7001, 563]
TINY_PROMPT = [2, 17, 301, 45, 2900, 8]

_WINE = shutil.which("wine64") or ("/usr/lib/wine/wine64"
                                   if Path("/usr/lib/wine/wine64").exists() else None)
_MISSING = [t for t, ok in (("x86_64-w64-mingw32-g++-posix",
                             shutil.which("x86_64-w64-mingw32-g++-posix")), ("wine64", _WINE))
            if not ok]
if _MISSING and os.environ.get("PYENGINE_REQUIRE_EMULATORS") == "1":
    raise RuntimeError(f"PYENGINE_REQUIRE_EMULATORS=1 but {', '.join(_MISSING)} not found")
pytestmark = [pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}"),
              pytest.mark.skipif(_core.best_isa() not in ("scalar", "avx2", "avx512"),
                                 reason="an x86-64 machine")]


@pytest.fixture(scope="module")
def win_build():
    proc = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_win(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "run", *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "WINE": _WINE or ""})


def windows_path(path: Path) -> str:
    return "Z:" + str(Path(path).resolve()).replace("/", "\\")  # Wine's drive of the root


def test_kernels_on_windows(win_build):
    proc = run_win("kernels")
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
    assert f"best level: {_core.best_isa()}" in proc.stdout
    assert proc.stdout.count("ok   ") >= 20 or _core.best_isa() == "scalar"


@pytest.mark.parametrize("model", ["tiny-q8_0", "real-270m"])
def test_generation_on_windows_equals_linux(win_build, make_model, real_gguf, model):
    path, prompt, n = ((make_model("tiny", "q8_0"), TINY_PROMPT, 12) if model == "tiny-q8_0"
                       else (real_gguf, REAL_PROMPT, 8))
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        here = eng.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True).tokens
    proc = run_win("generate", windows_path(path), str(n), *map(str, prompt))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    level, *tokens = proc.stdout.split()
    assert level == _core.isa()
    assert [int(t) for t in tokens] == here
