"""The real Gemma 3 270M file (google/gemma-3-270m as llama.cpp quantizes it, Q4_K_M: F32, Q8_0,
Q5_0, Q4_K and Q6_K tensors) on real text: against llama.cpp and against exact arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from support import rel_err

from conftest import oracle, oracle_greedy
from pyengine import Engine

# Written for these tests: ordinary English prose, about 160 tokens.
TEXT = (
    "The old lighthouse stood at the end of a narrow path, where the cliffs dropped into a grey "
    "and restless sea. For nearly a century its keepers had climbed the spiral stairs each "
    "evening to light the lamp, and sailors far from shore had trusted that small, steady glow. "
    "When the last keeper retired, the town could not decide what to do with the building. Some "
    "people wanted to sell it to a hotel company, while others hoped to turn it into a museum "
    "about the ships that had been lost nearby. In the end, a group of volunteers raised enough "
    "money to repair the roof and open the doors on weekends, and children now run up the same "
    "stairs to look out over the water. On quiet evenings, when the wind drops and the gulls "
    "settle on the rocks, the lamp is still lit, not to guide ships any more, but because the "
    "town has decided that it likes the light."
)
PROMPTS = ["The capital of France is", "My favourite way to spend a Sunday morning is",
           "Water boils at a lower temperature on high mountains because",
           "Here is a short recipe for pancakes:"]


@pytest.fixture(scope="module")
def real_path(real_gguf):
    return str(real_gguf)


@pytest.fixture(scope="module")
def engine(real_path):
    eng = Engine(real_path, n_ctx=1024)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def llama(real_path):
    return oracle(real_path, n_ctx=1024)


@pytest.fixture(scope="module")
def text_logits(engine, llama, real_path):
    """(ids, ours, llama.cpp's, exact float64) logits of TEXT."""
    from reference_gemma3 import Gemma3Reference

    ids = engine.tokenize(TEXT)
    ours = engine.logits(ids).astype(np.float64)
    llama.reset()
    llama.eval(ids)
    ref = np.array(llama.scores[: len(ids)], dtype=np.float64)
    exact = Gemma3Reference(real_path).logits(ids)
    return ids, ours, ref, exact



def test_file_holds_the_types_of_ollamas_q4_k_m(real_path):
    from pyengine import _core

    types = set(_core.ModelFile(real_path).tensor_types.values())
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= types


def test_tokenizer_matches_llama_cpp_on_real_text(engine, llama):
    other = "Numbers 3.14159 and 2026; émigré café, naïve — «quoted» 東京 🙂"
    for text in [TEXT, other] + PROMPTS:
        assert engine.tokenize(text) == llama.tokenize(text.encode(), add_bos=True, special=False)


def margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def test_logits_match_llama_cpp_on_real_text(text_logits):
    """Close to llama.cpp, and where the top token differs, llama.cpp itself hesitates.

    llama.cpp rounds real activations coarsely (blocks of 256 values before its K-quant
    products), so even exact arithmetic on this file picks a different top token than llama.cpp
    at 4% of these positions: a fixed top-1 rate against llama.cpp would test its rounding, not
    ours. The bar is exact arithmetic's own agreement with llama.cpp."""
    ids, ours, ref, exact = text_logits
    assert len(ids) >= 150
    err = rel_err(ours, ref)
    assert err.mean() <= 5e-2, f"mean relative L2 error {err.mean():.3e}"
    assert agreement(ours, ref) >= agreement(exact, ref) - 0.02
    differ = ours.argmax(1) != ref.argmax(1)
    assert np.all(margins(ref)[differ] < 0.5), margins(ref)[differ]


def test_logits_as_close_to_exact_arithmetic_as_llama_cpp(text_logits):
    _, ours, ref, exact = text_logits
    ours_err, llama_err = rel_err(ours, exact).mean(), rel_err(ref, exact).mean()
    assert ours_err <= 1.10 * llama_err, f"ours {ours_err:.3e} vs llama.cpp {llama_err:.3e}"
    assert agreement(ours, exact) >= max(0.97, agreement(ref, exact))


def test_teacher_forced_on_llama_cpps_greedy_continuations(engine, llama):
    """Where llama.cpp's top two logits are 0.5 or more apart, the same next token."""
    checked = 0
    for prompt in PROMPTS:
        ids = engine.tokenize(prompt)
        cont, margins = oracle_greedy(llama, ids, 32)
        ours = engine.logits(ids + cont[:-1])[len(ids) - 1:]
        for step, (tok, margin) in enumerate(zip(cont, margins)):
            if margin >= 0.5:
                checked += 1
                assert int(ours[step].argmax()) == tok, f"{prompt!r} step {step}: {margin:.2f}"
    assert checked >= 60  # most steps are decisive; the test must check many


def test_greedy_text_of_a_real_prompt(engine):
    out = engine.generate("The capital of France is", max_tokens=8, temperature=0.0)
    assert out.text.startswith(" the capital of the country of France")
