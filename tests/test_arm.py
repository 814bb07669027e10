"""The AArch64 build: cross-compiled and run under qemu-aarch64 (scripts/arm_check.sh). Every
NEON kernel level (plain NEON on an ARMv8.0 core, sdot on a later one) against exact arithmetic
and the scalar reference, and greedy tokens of tiny synthetic models and the real Gemma 3 270M
equal to this machine's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyengine import Engine

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "arm_check.sh"
# qemu's CPU models: "max" has the dot-product extension, a Cortex-A53 (ARMv8.0) has not.
CPUS = {"max": "dotprod", "cortex-a53": "neon"}
REAL_PROMPT = [2, 818, 5279, 529, 7001, 563]  # "<bos>The capital of France is", Gemma's vocabulary
TINY_PROMPT = [2, 17, 301, 45, 2900, 8]  # ids of the synthetic models' 3072-token vocabulary

_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64")
_MISSING = [t for t in _TOOLS if shutil.which(t) is None]
# scripts/run_tests.sh installs the tools and sets this, so CI cannot skip the check.
if _MISSING and os.environ.get("PYENGINE_REQUIRE_EMULATORS") == "1":
    raise RuntimeError(f"PYENGINE_REQUIRE_EMULATORS=1 but {', '.join(_MISSING)} not found")
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}")


@pytest.fixture(scope="module")
def arm_build():
    proc = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_arm(cpu: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "run", cpu, *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("cpu", CPUS)
def test_neon_kernels_against_exact_and_scalar(arm_build, cpu):
    proc = run_arm(cpu, "kernels")
    out = proc.stdout
    assert proc.returncode == 0 and "FAIL" not in out, out + proc.stderr
    assert f"best level: {CPUS[cpu]}" in out
    # Every level up to the CPU's best, every weight type, every other kernel.
    levels = ["neon", "dotprod"][: ["neon", "dotprod"].index(CPUS[cpu]) + 1]
    for level in levels:
        for t in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
                  "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"):
            assert f"ok   {level} {t} product" in out
        for k in ("quantize_q8", "to_f16", "f16_to_f32", "round_f16", "gelu_mul", "attn_keys",
                  "attn_scores", "attn_values"):
            assert f"ok   {level} {k}" in out


def greedy_here(path: Path, prompt: list[int], n: int) -> list[int]:
    with Engine(path, n_ctx=512, n_threads=2) as eng:
        return eng.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True).tokens


def greedy_arm(path: Path, prompt: list[int], n: int, cpu: str,
               isa: str | None = None) -> tuple[str, list[int]]:
    proc = run_arm(cpu, "generate", str(path), str(n), *map(str, prompt),
                   env={"PYENGINE_ISA": isa} if isa else None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    level, *tokens = proc.stdout.split()
    return level, [int(t) for t in tokens]


@pytest.mark.parametrize("model", ["tiny-q8_0", "tiny-k-Q4_K_M", "real-270m"])
def test_generation_on_arm_equals_this_machine(arm_build, make_model, quant_model, real_gguf,
                                               model):
    if model == "tiny-q8_0":
        path, prompt, n = make_model("tiny", "q8_0"), TINY_PROMPT, 12
    elif model == "tiny-k-Q4_K_M":
        path, prompt, n = quant_model("tiny-k", "Q4_K_M"), TINY_PROMPT, 12
    else:
        path, prompt, n = real_gguf, REAL_PROMPT, 8
    here = greedy_here(path, prompt, n)
    assert len(here) == n
    for cpu, isa in (("max", None), ("cortex-a53", None), ("max", "scalar")):
        level, tokens = greedy_arm(path, prompt, n, cpu, isa)
        assert level == (isa or CPUS[cpu])  # the dispatch reports the level it chose
        assert tokens == here, (cpu, level)
