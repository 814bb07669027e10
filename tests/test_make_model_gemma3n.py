"""The synthetic Gemma 3n writer: its tiny preset has the layout llama.cpp loads, and runs there.

Only the tiny preset is written here; e2b and e4b (the real shapes) are for benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from support import rel_err
from conftest import oracle, prompt_ids
from gemma3n_tensors import SPARSITY_STD_MUL
from gguf.quants import dequantize
from make_model import ModelConfig, make_config

Q = gguf.GGMLQuantizationType
DTYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}
N_PROMPT = 250  # several times the sliding window, and past it by far
N_GEN = 32
KV_LAYERS = 20  # llama.cpp: layers 0-19 own their KV, later ones share it



def field(reader: gguf.GGUFReader, key: str) -> Any:
    """Return a metadata value as Python data (a list for arrays)."""
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return make_config("tiny-3n")


@pytest.fixture(scope="module")
def reader(make_model) -> gguf.GGUFReader:
    return gguf.GGUFReader(make_model("tiny-3n", "q8_0"))


def test_tiny_3n_exercises_kv_sharing_and_the_window(cfg):
    # llama.cpp fixes these widths in code, whatever the file says.
    assert (cfg.n_altup, cfg.n_embd_altup, cfg.laurel_rank) == (4, 256, 64)
    assert cfg.n_layer > KV_LAYERS
    swa = [layer % 5 < 4 for layer in range(cfg.n_layer)]
    shared = swa[KV_LAYERS:]
    assert any(shared) and not all(shared), "shared layers of both kinds"
    assert swa[KV_LAYERS - 2] and not swa[KV_LAYERS - 1]  # the layers whose KV they read
    assert cfg.sliding_window < N_PROMPT


def test_metadata_is_written_as_the_converter_does(reader, cfg):
    a = "gemma3n"
    assert field(reader, "general.architecture") == a
    assert field(reader, f"{a}.block_count") == cfg.n_layer
    assert field(reader, f"{a}.feed_forward_length") == [cfg.n_ff] * cfg.n_layer
    assert field(reader, f"{a}.attention.sliding_window") == cfg.sliding_window
    assert field(reader, f"{a}.attention.sliding_window_pattern") == [
        layer % 5 < 4 for layer in range(cfg.n_layer)]
    assert reader.fields[f"{a}.attention.sliding_window_pattern"].types[-1] == \
        gguf.GGUFValueType.BOOL
    assert field(reader, f"{a}.attention.shared_kv_layers") == cfg.n_layer - KV_LAYERS
    assert field(reader, f"{a}.altup.num_inputs") == 4
    assert field(reader, f"{a}.altup.active_idx") == 0
    assert field(reader, f"{a}.embedding_length_per_layer_input") == 256
    assert field(reader, f"{a}.final_logit_softcapping") == 30.0
    sparsity = field(reader, f"{a}.activation_sparsity_scale")
    assert sparsity[:10] == pytest.approx([SPARSITY_STD_MUL] * 10)
    assert all(s == -np.inf for s in sparsity[10:]) and len(sparsity) == cfg.n_layer
    assert field(reader, f"{a}.attention.key_length") == cfg.head_dim
    assert field(reader, f"{a}.rope.freq_base_swa") == 10000.0


def test_tensors_have_the_names_shapes_and_types_llama_cpp_loads(reader, cfg):
    e, pl, n = cfg.n_embd, 256, cfg.n_layer
    tensors = {t.name: t for t in reader.tensors}
    # ggml order: (in, out[, stack])
    expect = {"token_embd.weight": [e, cfg.n_vocab], "per_layer_token_embd.weight": [pl * n,
              cfg.n_vocab], "per_layer_model_proj.weight": [e, pl * n],
              "per_layer_proj_norm.weight": [pl], "altup_proj.weight": [e, e, 3],
              "altup_unembd_proj.weight": [e, e, 3], "output_norm.weight": [e]}
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    block = {"attn_norm": [e], "attn_q": [e, q], "attn_k": [e, kv], "attn_v": [e, kv],
             "attn_output": [q, e], "attn_q_norm": [cfg.head_dim], "attn_k_norm": [cfg.head_dim],
             "post_attention_norm": [e], "ffn_norm": [e], "ffn_gate": [e, cfg.n_ff],
             "ffn_up": [e, cfg.n_ff], "ffn_down": [cfg.n_ff, e], "post_ffw_norm": [e],
             "inp_gate": [e, pl], "proj": [pl, e], "post_norm": [e],
             "altup_correct_coef": [4, 4], "altup_correct_scale": [e],
             "altup_predict_coef": [4, 16], "altup_router": [e, 4], "altup_router_norm": [e],
             "laurel_l": [e, 64], "laurel_r": [64, e], "laurel_post_norm": [e]}
    for i in range(n):
        expect.update({f"blk.{i}.{k}.weight": v for k, v in block.items()})
    assert set(tensors) == set(expect), "tied embeddings: no output.weight"
    for name, shape in expect.items():
        t = tensors[name]
        assert [int(d) for d in t.shape] == shape, name
        # 1-D weights and the AltUp coefficient matrices stay F32, as the converter keeps them.
        f32 = len(shape) == 1 or "altup_correct_coef" in name or "altup_predict_coef" in name
        assert t.tensor_type == (Q.F32 if f32 else Q.Q8_0), name


def test_weights_do_not_depend_on_the_dtype(make_model):
    readers = {d: gguf.GGUFReader(make_model("tiny-3n", d)) for d in DTYPES}
    names = ["token_embd.weight", "altup_proj.weight", "blk.21.laurel_r.weight",
             "blk.3.altup_router.weight", "blk.3.altup_predict_coef.weight"]
    for name in names:
        values = {}
        for d, r in readers.items():
            t = next(t for t in r.tensors if t.name == name)
            values[d] = dequantize(t.data, t.tensor_type).reshape(-1)
        ref = values["f32"]
        for d in ("f16", "q8_0"):
            err = np.linalg.norm(values[d] - ref) / np.linalg.norm(ref)
            assert err < (1e-3 if d == "f16" else 1e-2), (name, d, err)


@pytest.fixture(scope="module")
def logits_by_dtype(make_model) -> dict[str, tuple[np.ndarray, list[int], np.ndarray]]:
    """llama.cpp's logits for a long prompt, then a greedy continuation and its logits."""
    out = {}
    for dtype in DTYPES:
        path: Path = make_model("tiny-3n", dtype)
        llm = oracle(path)
        ids = prompt_ids(llm.n_vocab(), N_PROMPT)
        llm.eval(ids)
        prompt = np.array(llm.scores[:N_PROMPT], dtype=np.float64)
        gen, gen_logits = [], []
        for _ in range(N_GEN):  # one token at a time: the decode path, past the window
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            gen_logits.append(row)
            gen.append(int(row.argmax()))
            llm.eval([gen[-1]])
        out[dtype] = (prompt, gen, np.array(gen_logits))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_llama_cpp_runs_tiny_3n_well_conditioned(logits_by_dtype, dtype, cfg):
    prompt, gen, gen_logits = logits_by_dtype[dtype]
    assert prompt.shape == (N_PROMPT, cfg.n_vocab)
    assert np.isfinite(prompt).all() and np.isfinite(gen_logits).all()
    assert np.abs(prompt).max() < 30.0  # the final softcap
    spread = prompt.std(axis=1)
    assert spread.min() > 1.0 and spread.max() < 10.0, (spread.min(), spread.max())
    top1 = prompt.argmax(axis=1)
    assert len(set(top1.tolist())) >= N_PROMPT // 10, "top-1 barely depends on the input"
    assert len(gen) == N_GEN and all(0 <= t < cfg.n_vocab for t in gen)
    assert len(set(gen)) > 1


def test_rounding_does_not_blow_up_through_the_layers(logits_by_dtype):
    # The parity tests compare two engines whose arithmetic differs by rounding; a synthetic model
    # that amplified rounding chaotically (as Gemma 3n's layout can) would make them meaningless.
    # Rounding the weights themselves must move the logits only modestly.
    ref = logits_by_dtype["f32"][0]
    for dtype, bound in (("f16", 0.01), ("q8_0", 0.1)):
        other = logits_by_dtype[dtype][0]
        err = rel_err(other, ref)
        assert np.median(err) < bound, (dtype, float(np.median(err)))
        assert (other.argmax(1) == ref.argmax(1)).mean() > 0.8, dtype
