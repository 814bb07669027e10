"""Each architecture's tensors are declared once, in the native core's table: the table matches
real and synthetic files, and no other C++ or Python file names them
(scripts/check_tensor_names.py)."""

from __future__ import annotations

import math

import pytest

import check_tensor_names
from make_model import make_config, tensor_specs
from pyengine import _core


def test_no_tensor_name_is_written_twice():
    assert check_tensor_names.offences() == []


def test_the_check_finds_names_written_twice(tmp_path):
    for rel, text in {
        "csrc/model/a.cc": 'Bind(f, p + "attn_q.weight", ne);\n',
        "csrc/cuda/b.cu": 'Upload(Bind(f, "blk.0.attn_q.weight"));\n',
        "pyengine/x.py": 'NAMES = {"ffn_gate": "mlp.gate_proj"}\n',
        "scripts/y.py": "block = [('ffn_gate', (f, e))]\n",
        "scripts/z.py": 'print("output of attn_q")  # prose, not a tensor name\n',
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert check_tensor_names.offences(tmp_path) == [
        "tensor 'attn_q' is named in 2 C++ files: csrc/cuda/b.cu, csrc/model/a.cc",
        "tensor 'ffn_gate' is named in 2 Python files: pyengine/x.py, scripts/y.py",
    ]


def _file_shapes(path) -> dict[str, tuple[int, ...]]:
    """GGUF-order shapes of the text model's tensors (the vision tower's left out)."""
    _meta, tensors, _lengths, _info = _core.read_gguf(str(path), 0)
    return {name: tuple(shape) for name, _type, shape, _nbytes in tensors
            if not name.startswith(("v.", "mm."))}


def _table_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The table's tensors at a file's config, as the native core sizes them (the per-layer
    table at n_vocab rows, as llama.cpp's converter writes it)."""
    dims = {**config, "n_vocab_per_layer": config["n_vocab"],
            "q_dim": config["n_head"] * config["head_dim"],
            "kv_dim": config["n_head_kv"] * config["head_dim"], "per_layer_width": 256,
            "per_layer_all": 256 * config["n_layer"], "laurel_rank": 64, "altup_streams": 4,
            "altup_streams_less_1": 3, "altup_streams_squared": 16}
    out = {}
    for spec in _core.architecture_tensors(config["arch"]):
        for layer in range(config["n_layer"]) if spec["per_layer"] else [None]:
            name = spec["name"] if layer is None else f"blk.{layer}.{spec['name']}"
            out[name] = tuple(dims[d] for d in spec["ne"])
    return out


def test_the_table_is_the_real_file(real_gguf):
    """google/gemma-3-270m as llama.cpp writes it: the table's tensors, no more, no fewer
    (the optional output projection is absent: its embeddings are tied)."""
    config = _core.ModelFile(str(real_gguf)).config
    table = _table_shapes(config)
    assert _file_shapes(real_gguf) == {k: v for k, v in table.items() if k != "output.weight"}


@pytest.mark.parametrize("preset", ["tiny", "tiny-3n"])
def test_the_writer_writes_the_table(make_model, preset):
    path = make_model(preset, "q8_0")
    config = _core.ModelFile(str(path)).config
    tied = make_config(preset).tied_embeddings
    assert _file_shapes(path) == {k: v for k, v in _table_shapes(config).items()
                                  if not (tied and k == "output.weight")}
    specs = tensor_specs(make_config(preset))
    assert [name for name, _shape, _kind in specs] == list(_file_shapes(path))
    assert all(math.prod(shape) > 0 for _name, shape, _kind in specs)


def test_every_table_entry_is_whole():
    kinds = {"matrix", "table", "norm", "scale", "small"}
    for arch in _core.architectures():
        table = _core.architecture_tensors(arch)
        names = [s["name"] for s in table]
        assert len(names) == len(set(names)), arch
        for s in table:
            assert s["kind"] in kinds and s["ne"], s
            assert (len(s["ne"]) == 1) == (s["kind"] in ("norm", "scale")), s
            assert s["plus_one"] <= (s["kind"] == "norm"), s  # only norms carry the +1
    with pytest.raises(Exception, match="no tensor table for architecture 'llama'"):
        _core.architecture_tensors("llama")


def _gemma4_expected(config: dict) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(every tensor the table allows in a Gemma 4 file at this config with its per-layer shape,
    the names a file must have), from the table's presence rules and the config's per-layer
    head sizes, KV heads and FFN widths."""
    swa = config["layer_is_swa"]
    full = next((i for i, s in enumerate(swa) if not s), 0)
    shapes, required = {}, set()
    for spec in _core.architecture_tensors("gemma4"):
        for layer in range(config["n_layer"]) if spec["per_layer"] else [None]:
            at = full if layer is None else layer
            hd = config["layer_head_dim"][at] if layer is not None else config["head_dim"]
            p = config["n_embd_per_layer"]
            dims = {"n_embd": config["n_embd"], "n_vocab": config["n_vocab"], "head_dim": hd,
                    "q_dim": config["n_head"] * hd,
                    "kv_dim": config["layer_n_head_kv"][at] * hd,
                    "n_ff": config["layer_n_ff"][at], "per_layer_width": p,
                    "per_layer_all": p * config["n_layer"], "n_expert": config["n_expert"],
                    "n_ff_exp": config["n_ff_exp"], "n_ff_exp_2": 2 * config["n_ff_exp"],
                    "rope_freqs": config["layer_head_dim"][full] // 2, "one": 1}
            only = spec["only"]
            if (only == "moe" and not (config["layer_is_moe"] and config["layer_is_moe"][layer])
                    or only == "per_layer_inputs" and p == 0
                    or only == "full_layers" and all(swa)):
                continue
            name = spec["name"] if layer is None else f"blk.{layer}.{spec['name']}"
            shapes[name] = tuple(dims[d] for d in spec["ne"])
            owner = layer is None or config["kv_layer"][layer] == layer
            if not spec["optional"] and (only != "kv_owners" or owner):
                required.add(name)
    return shapes, required


@pytest.mark.parametrize("preset", ["tiny-4", "tiny-4-moe"])
def test_the_writer_writes_the_gemma4_table(make_model, preset):
    """Gemma 4's layers differ in which tensors they have and in their shapes: the synthetic
    file has every tensor the table requires of each layer, only tensors the table allows, at
    the per-layer shapes the core binds."""
    path = make_model(preset, "q8_0")
    config = _core.ModelFile(str(path)).config
    shapes, required = _gemma4_expected(config)
    written = _file_shapes(path)
    assert required <= set(written)
    assert {name: shapes.get(name) for name in written} == written
    # The layers that reuse KV carry no K or V; the full layers of tiny-4 no V either.
    if preset == "tiny-4":
        assert "blk.5.attn_k.weight" not in written and "blk.4.attn_v.weight" not in written
        assert "blk.0.attn_v.weight" in written
    specs = tensor_specs(make_config(preset))
    assert [name for name, _shape, _kind in specs] == list(written)
