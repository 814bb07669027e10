"""Every weight type of Ollama's and llama.cpp's files, on tiny Gemma 3 and Gemma 3n models that
llama.cpp's own quantizer wrote (each type alone, and llama.cpp's mixes), against llama.cpp and,
for Gemma 3, against exact arithmetic on the values the file encodes.

The bar is what Q8_0 meets against llama.cpp (test_parity.py, test_parity_gemma3n.py). For the
256-value types llama.cpp quantizes the activations in blocks of 256 (Q8_K) where this engine
uses blocks of 32 (as llama.cpp itself does for Q8_0 weights): on these files llama.cpp's own
logits are then up to 5.2e-2 (relative L2) from exact arithmetic and ours 3.7e-2, so the two
engines can differ by more than Q8_0's bound while both are right. For those types the bar is
held against exact arithmetic instead (a float64 forward pass on the dequantized weights), and
ours must be at least as close to it as llama.cpp is."""

from __future__ import annotations

import numpy as np
import pytest

from support import rel_err

from conftest import oracle, oracle_greedy, prompt_ids
from pyengine import Engine, _core

N_PROMPTS, N_TOKENS = 4, 250  # several times the tiny presets' window (32)
SMALL_BLOCKS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q8_0"]
K_BLOCKS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
MIXES = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q3_K_M"]



def logits(path, exact: bool):
    """(ours, llama.cpp's, exact float64 or None) over N_PROMPTS prompts, rows stacked."""
    from reference_gemma3 import Gemma3Reference

    eng = Engine(path, n_ctx=512)
    llm = oracle(path)
    ref_model = Gemma3Reference(path) if exact else None
    ours, ref, ex = [], [], []
    for seed in range(N_PROMPTS):
        ids = prompt_ids(eng.n_vocab, N_TOKENS, seed)
        ours.append(eng.logits(ids).astype(np.float64))
        llm.reset()
        llm.eval(ids)
        ref.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
        if ref_model is not None:
            ex.append(ref_model.logits(ids))
    eng.close()
    return np.concatenate(ours), np.concatenate(ref), np.concatenate(ex) if ex else None


def holds(path, types: set[str]) -> bool:
    found = set(_core.ModelFile(str(path)).tensor_types.values())
    return types <= found


@pytest.mark.parametrize("ftype", SMALL_BLOCKS)
def test_gemma3_32_value_types_match_llama_cpp(quant_model, ftype):
    path = quant_model("tiny-k", ftype, pure=True)
    assert holds(path, {ftype})
    ours, ref, _ = logits(path, exact=False)
    err, top1 = rel_err(ours, ref), float((ours.argmax(1) == ref.argmax(1)).mean())
    assert err.max() <= 5e-2 and top1 >= 0.95, (ftype, err.max(), top1)


@pytest.mark.parametrize("ftype,pure", [(t, True) for t in K_BLOCKS] + [(m, False) for m in MIXES])
def test_gemma3_256_value_types_match_exact_arithmetic(quant_model, ftype, pure):
    path = quant_model("tiny-k", ftype, pure=pure)
    if pure:
        assert holds(path, {ftype})
    ours, ref, exact = logits(path, exact=True)
    err, top1 = rel_err(ours, exact), float((ours.argmax(1) == exact.argmax(1)).mean())
    assert err.max() <= 5e-2 and top1 >= 0.95, (ftype, err.max(), top1)
    llama_err = rel_err(ref, exact)
    assert np.median(err) <= np.median(llama_err), (ftype, np.median(err), np.median(llama_err))


@pytest.mark.parametrize("ftype,pure", [(t, True) for t in SMALL_BLOCKS + K_BLOCKS]
                         + [("Q4_K_M", False)])
def test_gemma3n_types_match_llama_cpp(quant_model, ftype, pure):
    """Gemma 3n's Q8_0 bar (test_parity_gemma3n.py): 1e-1 / 85%."""
    path = quant_model("tiny-3n-k", ftype, pure=pure)
    if pure:
        assert holds(path, {ftype})
    ours, ref, _ = logits(path, exact=False)
    err, top1 = rel_err(ours, ref), float((ours.argmax(1) == ref.argmax(1)).mean())
    assert err.max() <= 1e-1 and top1 >= 0.85, (ftype, err.max(), top1)


def test_greedy_generation_on_a_q4_k_m_file_matches_llama_cpp(quant_model):
    """Where llama.cpp's top two logits are 0.5 or more apart, the same greedy token."""
    path = quant_model("tiny-k", "Q4_K_M")
    eng = Engine(path, n_ctx=512)
    ids = eng.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time")
    cont, margins = oracle_greedy(oracle(path), ids, 32)
    ours = eng.logits(ids + cont[:-1])[len(ids) - 1:]
    decisive = [s for s, m in enumerate(margins) if m >= 0.5]
    assert len(decisive) >= 16
    for s in decisive:
        assert int(ours[s].argmax()) == cont[s], (s, margins[s])
    eng.close()
