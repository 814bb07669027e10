"""Smoke test of an installed pyengine (cibuildwheel's test-command, and scripts/wheel_check.sh):
writes a tiny synthetic Gemma 3 model (Q8_0, gguf-py), loads it, generates greedy tokens at the
CPU's best kernel level and at the scalar reference, and checks that they are the same tokens
(Q8_0 products are exact integer sums, so the levels agree bit for bit on this model) and decode
to text. Prints the level it chose; exits non-zero on any failure.

    python scripts/wheel_smoke.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_model and its siblings

from make_model import write_model  # noqa: E402

from pyengine import Engine, _core  # noqa: E402

# Ids of the synthetic model's 3072-token vocabulary, random: a short prompt sends this random
# model into repeating one token, which would check little.
PROMPT = [2, 1421, 1536, 2266, 2851, 107, 435, 2469, 2846, 749, 937, 2607, 1271, 821, 2483, 773,
          1229, 1932, 1650, 259, 85, 2597, 2261, 2514, 1615, 2453, 991, 1359, 2365, 374, 911, 375,
          1362, 2930, 404, 1151, 1211, 2711, 612, 1508, 789]
N = 16


def greedy(path: Path) -> tuple[list[int], str]:
    with Engine(path, n_ctx=256, n_threads=2) as eng:
        out = eng.generate(PROMPT, max_tokens=N, temperature=0, ignore_eos=True)
    return out.tokens, out.text


def main() -> int:
    best = _core.best_isa()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_model(Path(tmp) / "tiny-q8_0.gguf", "tiny", "q8_0")
        tokens, text = greedy(path)
        _core.set_isa("scalar")
        ref, _ = greedy(path)
        _core.set_isa(best)
    print(f"pyengine {_core.isa()} (best {best}): {tokens}")
    if len(tokens) != N or not all(0 <= t < 3072 for t in tokens) or len(set(tokens)) < 4:
        print(f"FAIL: expected {N} varied tokens of the vocabulary, got {tokens}")
        return 1
    if tokens != ref:
        print(f"FAIL: the {best} kernels gave {tokens}, the scalar reference {ref}")
        return 1
    if not isinstance(text, str):
        print("FAIL: no text")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
