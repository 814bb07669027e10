"""The CUDA backend's tests (test_cuda.py) on the CPU emulator of CUDA.

CI has no GPU, so the backend is built a second time with ``PYENGINE_CUDA=EMULATE`` (its .cu
files compiled as C++ against tests/cuda/emulator) and test_cuda.py runs against that build in
a subprocess: every kernel, the split attention, the graphs and the batcher's use of the
device run and are compared with the CPU backend. The emulator is strict where a GPU would
fail or be undefined (test_cuda.py checks that it is); it says nothing about speed.

The build tree is kept (build/cuda-emulated-*), so a rerun only recompiles what changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pyengine import _core

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / f"cuda-emulated-{sys.implementation.cache_tag}"

# test_cuda.py's tests that only run where there is no device (the emulator is one).
NO_DEVICE_ONLY = {"test_without_a_device_cuda_is_a_clean_error", "test_selftest_needs_the_backend"}

# Runs pytest with the emulated package first on the path. An editable install's import hook
# would hand out the source tree's package (with the regular extension) instead: drop it.
RUNNER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Redirecting" not in type(f).__name__]
sys.path.insert(0, sys.argv[1])
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""

pytestmark = pytest.mark.skipif(
    _core.cuda_available() and "emulator" not in _core.cuda_device_info(),
    reason="a CUDA device is present: test_cuda.py runs on it directly")


def tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is needed to build the emulated backend (pip install '.[test]')")
    return found


@pytest.fixture(scope="module")
def emulated_site() -> Path:
    """A folder holding a `pyengine` package whose extension is the emulated build."""
    import pybind11

    configure = [tool("cmake"), "-S", str(ROOT), "-B", str(BUILD), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
                 "-DPYENGINE_CUDA=EMULATE", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    for cmd in (configure, [tool("cmake"), "--build", str(BUILD)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    ext = BUILD / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert ext.exists(), f"no {ext.name} in {BUILD}"
    pkg = BUILD / "site" / "pyengine"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "pyengine").iterdir():
        if entry.name.startswith("_core") or entry.name == "__pycache__":
            continue
        (pkg / entry.name).symlink_to(entry)
    (pkg / ext.name).symlink_to(ext)
    return pkg.parent


def test_cuda_tests_pass_on_the_emulator(emulated_site, tmp_path):
    report = tmp_path / "cuda.xml"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", RUNNER, str(emulated_site), "-q", "-p",
                        "no:cacheprovider", f"--junitxml={report}", "-rs",
                        str(ROOT / "tests" / "test_cuda.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{r.stdout[-8000:]}\n{r.stderr[-4000:]}"
    cases = list(ET.parse(report).getroot().iter("testcase"))
    skipped = {c.get("name").split("[")[0] for c in cases if c.find("skipped") is not None}
    ran = {c.get("name").split("[")[0] for c in cases if c.find("skipped") is None}
    # Everything that needs a device ran (and passed), on the emulated build: only the
    # no-device checks skip.
    assert skipped <= NO_DEVICE_ONLY, f"skipped on the emulator: {sorted(skipped)}"
    assert {"test_the_emulator_reports_each_fault", "test_each_kernel_matches_its_cpu_counterpart",
            "test_logits_match_the_cpu", "test_graphs_and_direct_launches_agree"} <= ran
