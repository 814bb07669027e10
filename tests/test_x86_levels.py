"""The installed package on older x86-64 CPUs, under qemu-x86_64 (Debian's qemu-user): on a
Haswell (AVX2, no AVX-512) and a Nehalem (neither) the dispatch picks avx2 and scalar, and greedy
tokens of tiny synthetic models and the real Gemma 3 270M equal this machine's. A stray wide
instruction outside the dispatched kernels would stop the emulated process with SIGILL.

One exception, measured: the AVX2 and AVX-512 kernels multiply-add with FMA, the baseline x86-64
scalar reference (no FMA instruction) rounds the product and the sum apart. On the random
Q4_K_M model those last-bit differences flip roundings of the Q8_0-quantized activations, and
its logits at the scalar level differ from AVX-512's by up to 0.55 (the size of its difference
from llama.cpp, test_parity_types.py). There the scalar level must give the native token wherever
the native top two logits are 0.5 or more apart; everywhere else, the same tokens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from pyengine import Engine

CPUS = {"Haswell": "avx2", "Nehalem": "scalar"}
REAL_PROMPT = [2, 818, 5279, 529, 7001, 563]  # "<bos>The capital of France is", Gemma's vocabulary
TINY_PROMPT = [2, 17, 301, 45, 2900, 8]

# scripts/run_tests.sh installs qemu-user, and CI sets this so that the check cannot skip.
if shutil.which("qemu-x86_64") is None and os.environ.get("PYENGINE_REQUIRE_EMULATORS") == "1":  # noqa: E501
    raise RuntimeError("PYENGINE_REQUIRE_EMULATORS=1 but qemu-x86_64 not found")
pytestmark = pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64")

# Run in the emulated interpreter: the level the dispatch chose, then per model the greedy
# tokens and the argmax of every position's logits along the native continuation.
CHILD = """
import json, sys
from pyengine import _core, Engine
out = {"isa": _core.isa(), "tokens": [], "argmax": []}
for path, prompt, n, native in json.loads(sys.argv[1]):
    with Engine(path, n_ctx=256, n_threads=2) as eng:
        out["tokens"].append(eng.generate(prompt, max_tokens=n, temperature=0,
                                          ignore_eos=True).tokens)
        logits = eng.logits(prompt + native[:-1])[len(prompt) - 1:]
        out["argmax"].append([int(row.argmax()) for row in logits])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cases(make_model, quant_model, real_gguf):
    """(path, prompt, n, exact) per model, and this machine's tokens and top-two margins."""
    out = []
    for path, prompt, n, exact in ((make_model("tiny", "q8_0"), TINY_PROMPT, 12, True),
                                   (quant_model("tiny-k", "Q4_K_M"), TINY_PROMPT, 12, False),
                                   (real_gguf, REAL_PROMPT, 8, True)):
        with Engine(path, n_ctx=256, n_threads=2) as eng:
            native = eng.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True).tokens
            top2 = np.sort(eng.logits(prompt + native[:-1])[len(prompt) - 1:], axis=1)[:, -2:]
        out.append((str(path), prompt, n, exact, native, (top2[:, 1] - top2[:, 0]).tolist()))
    return out


@pytest.mark.parametrize("cpu", CPUS)
def test_older_cpus_choose_their_level_and_give_the_same_tokens(cases, cpu):
    env = {k: v for k, v in os.environ.items() if k != "PYENGINE_ISA"}
    arg = json.dumps([(path, prompt, n, native) for path, prompt, n, _, native, _ in cases])
    # Away from the checkout, whose uncompiled pyengine/ would shadow the installed package.
    proc = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", CHILD, arg],
                          capture_output=True, text=True, timeout=900, env=env,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["isa"] == CPUS[cpu]
    for (path, _, n, exact, native, margins), tokens, argmax in zip(cases, got["tokens"],
                                                                    got["argmax"]):
        if exact or cpu != "Nehalem":
            assert tokens == native, path
            assert argmax == native, path
        else:
            decisive = [s for s, m in enumerate(margins) if m >= 0.5]
            assert len(decisive) >= n // 2, margins
            assert all(argmax[s] == native[s] for s in decisive), (path, margins)
