"""scripts/quantize_model.py: llama.cpp's own quantizer writes every weight type and mix.

The expected tensor types are what llama.cpp 0.3.36 (llama-quant.cpp) really writes for these
shapes, read back with gguf-py; the files must load in llama.cpp and give finite logits.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import oracle
from quantize_model import FTYPES, QuantizeError, main, quantize, quantize_preset

Q = gguf.GGMLQuantizationType

# The type of every quantizable matrix when an ftype is applied pure (aliases and Q2_K_S, which
# llama.cpp refuses without an importance matrix, left out).
PURE_TYPE = {
    "F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0,
    "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "Q2_K": Q.Q2_K, "Q3_K_S": Q.Q3_K,
    "Q3_K_M": Q.Q3_K, "Q3_K_L": Q.Q3_K, "Q4_K_S": Q.Q4_K, "Q4_K_M": Q.Q4_K, "Q5_K_S": Q.Q5_K,
    "Q5_K_M": Q.Q5_K, "Q6_K": Q.Q6_K, "IQ4_NL": Q.IQ4_NL, "IQ4_XS": Q.IQ4_XS,
}
# llama.cpp's Q4_K_M gives attn_v and ffn_down Q6_K in the layers its use_more_bits picks: the
# first and last eighth of the layers and every third one between them.
MORE_BITS_8 = {0, 3, 6, 7}  # of 8 layers (tiny, tiny-k)
MORE_BITS_25 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23, 24}  # of 25 layers (tiny-3n-k)


def types(path: Path) -> dict[str, Q]:
    """Tensor name -> ggml type, as gguf-py reads the file."""
    return {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(path).tensors}


def field(path: Path, key: str):
    return gguf.GGUFReader(path).fields[key].contents()


def runs_in_llama_cpp(path: Path, n_vocab: int = 3072) -> None:
    """llama.cpp loads the file and gives finite logits over a prompt longer than the window."""
    llm = oracle(path, n_ctx=64)
    ids = [2] + np.random.default_rng(0).integers(300, n_vocab, 47).tolist()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    assert logits.shape == (len(ids), n_vocab)
    assert np.isfinite(logits).all()
    llm.close()


def test_ftype_table_covers_llama_quantize_names():
    assert set(PURE_TYPE) | {"Q2_K_S", "Q3_K", "Q4_K", "Q5_K"} == set(FTYPES)


@pytest.mark.parametrize("ftype", sorted(PURE_TYPE))
def test_pure_every_matrix_in_the_ftype_type_and_llama_cpp_runs_it(quant_model, ftype):
    path = quant_model("tiny-k", ftype, pure=True)
    got = types(path)
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        # tiny-k's rows are multiples of 256: no fallback; 1-D norms stay F32.
        want = PURE_TYPE[ftype] if len(t.shape) == 2 else Q.F32
        assert got[t.name] == want, t.name
    assert field(path, "general.file_type") == getattr(
        gguf.LlamaFileType, "ALL_F32" if ftype == "F32" else f"MOSTLY_{ftype}")
    runs_in_llama_cpp(path)


def test_q4_k_m_on_tiny_k_mixes_q4_k_and_q6_k(quant_model):
    got = types(quant_model("tiny-k", "Q4_K_M"))
    want: dict[str, Q] = {"token_embd.weight": Q.Q4_K, "output.weight": Q.Q6_K}
    for i in range(8):
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            want[f"blk.{i}.{name}.weight"] = Q.Q4_K
        for name in ("attn_v", "ffn_down"):
            want[f"blk.{i}.{name}.weight"] = Q.Q6_K if i in MORE_BITS_8 else Q.Q4_K
    assert {k: v for k, v in got.items() if v != Q.F32} == want
    assert Counter(got.values()) == {Q.F32: 49, Q.Q4_K: 49, Q.Q6_K: 9}


def test_q4_k_m_on_tiny_falls_back_where_rows_are_not_256(quant_model):
    """tiny's rows of 128 (and ffn_down's 384) take llama.cpp's 32-block fallbacks: Q4_K ->
    Q5_0, Q6_K -> Q8_0, and the output, whose rows do not fit Q4_K, is Q8_0. Only attn_output,
    whose rows are n_head * head_dim = 256, really gets Q4_K."""
    path = quant_model("tiny", "Q4_K_M")
    got = types(path)
    want: dict[str, Q] = {"token_embd.weight": Q.Q5_0, "output.weight": Q.Q8_0}
    for i in range(8):
        for name in ("attn_q", "attn_k", "ffn_gate", "ffn_up"):
            want[f"blk.{i}.{name}.weight"] = Q.Q5_0
        want[f"blk.{i}.attn_output.weight"] = Q.Q4_K
        for name in ("attn_v", "ffn_down"):
            want[f"blk.{i}.{name}.weight"] = Q.Q8_0 if i in MORE_BITS_8 else Q.Q5_0
    assert {k: v for k, v in got.items() if v != Q.F32} == want
    runs_in_llama_cpp(path)


def test_q4_k_m_on_gemma3n(quant_model):
    """Gemma 3n, tied embeddings: token_embd and per_layer_token_embd take the output's Q6_K;
    AltUp, LAuReL and per_layer_model_proj are never quantized (they stay F32)."""
    path = quant_model("tiny-3n-k", "Q4_K_M")
    got = types(path)
    assert got["token_embd.weight"] == got["per_layer_token_embd.weight"] == Q.Q6_K
    for name in ("per_layer_model_proj.weight", "altup_proj.weight", "altup_unembd_proj.weight"):
        assert got[name] == Q.F32, name
    for i in range(25):
        for name in ("altup_correct_coef", "altup_predict_coef", "altup_router", "laurel_l",
                     "laurel_r"):
            assert got[f"blk.{i}.{name}.weight"] == Q.F32
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "inp_gate",
                     "proj"):
            assert got[f"blk.{i}.{name}.weight"] == Q.Q4_K
        for name in ("attn_v", "ffn_down"):
            want = Q.Q6_K if i in MORE_BITS_25 else Q.Q4_K
            assert got[f"blk.{i}.{name}.weight"] == want, (i, name)
    assert Counter(got.values()) == {Q.F32: 380, Q.Q4_K: 199, Q.Q6_K: 28}
    runs_in_llama_cpp(path)


def test_token_embedding_and_output_types(make_model, tmp_path):
    dst = quantize(make_model("tiny-k", "f32"), tmp_path / "m.gguf", "q4_k_m", pure=True,
                   token_embedding_type="q8_0", output_tensor_type="Q6_K")
    got = types(dst)
    assert got["token_embd.weight"] == Q.Q8_0
    assert got["output.weight"] == Q.Q6_K
    assert got["blk.0.attn_q.weight"] == Q.Q4_K


def test_preset_mode_deletes_its_source(tmp_path):
    dst = tmp_path / "tiny-q4_0.gguf"
    info = quantize_preset("tiny", dst, "Q4_0", source_dtype="f32")
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]
    assert info["output_bytes"] == dst.stat().st_size < info["source_bytes"]
    assert Counter(types(dst).values())[Q.Q4_0] > 0


def test_cli_stdout_has_no_llama_cpp_log(make_model, tmp_path, capfd):
    dst = tmp_path / "m.gguf"
    assert main([str(make_model("tiny", "f32")), "--ftype", "q8_0", "-o", str(dst),
                 "--types"]) == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("quantized in")
    assert lines[1].startswith(f"{dst}: Q8_0")
    assert lines[1].endswith("tensor types: F32 49, Q8_0 58")
    assert err == ""


# ------------------------------------------------------------------------------------ bad input

def test_unknown_ftype(make_model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown ftype 'Q4_K_X'.*Q4_K_M"):
        quantize(make_model("tiny", "f32"), tmp_path / "m.gguf", "Q4_K_X")


def test_unknown_tensor_type_name(make_model, tmp_path):
    with pytest.raises(ValueError, match="unknown token_embedding_type 'q9'"):
        quantize(make_model("tiny", "f32"), tmp_path / "m.gguf", "Q4_0",
                 token_embedding_type="q9")


def test_missing_source_and_output_dir(make_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        quantize(tmp_path / "absent.gguf", tmp_path / "m.gguf", "Q4_0")
    with pytest.raises(FileNotFoundError, match="output directory"):
        quantize(make_model("tiny", "f32"), tmp_path / "no" / "m.gguf", "Q4_0")


def test_source_is_not_gguf_or_is_the_output(make_model, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        quantize(junk, tmp_path / "m.gguf", "Q4_0")
    src = make_model("tiny", "f32")
    with pytest.raises(ValueError, match="is the source file"):
        quantize(src, src, "Q4_0")


def test_llama_cpp_failure_is_reported_and_leaves_no_file(make_model, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(make_model("tiny", "f32").read_bytes()[:4096])
    with pytest.raises(QuantizeError, match="failed to load model"):
        quantize(truncated, tmp_path / "m.gguf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.gguf"]


def test_q2_k_s_needs_an_importance_matrix(make_model, tmp_path):
    with pytest.raises(QuantizeError, match="importance matrix"):
        quantize(make_model("tiny-k", "f32"), tmp_path / "m.gguf", "Q2_K_S")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_on_stderr(tmp_path, capfd):
    assert main([str(tmp_path / "absent.gguf"), "--ftype", "Q4_0", "-o",
                 str(tmp_path / "m.gguf")]) == 1
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("error: source model")
