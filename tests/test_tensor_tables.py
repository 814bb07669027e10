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
