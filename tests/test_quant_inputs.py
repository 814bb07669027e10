"""Bad quantized files get a clear error, never a crash: a truncated K-quant tensor, a row that is
not a whole number of blocks, an unknown type id, and a type the reader knows but the kernels do
not compute (named, with the tensor, by loading and by `pyengine show`)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyengine import Engine, GGUFError, ModelError, _core

TENSOR = "blk.0.attn_q.weight"


@pytest.fixture(scope="module")
def q4_k_m(quant_model) -> bytes:
    path = quant_model("tiny-k", "Q4_K_M")
    assert _core.ModelFile(str(path)).tensor_types[TENSOR] == "Q4_K"
    return path.read_bytes()


def info_at(data: bytes, name: str) -> int:
    """Offset of a tensor's info right after its name: n_dims u32, ne u64 x n_dims, type u32."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key)
    return at + len(key)


def patch(data: bytes, name: str, *, type_id: int | None = None, ne0: int | None = None) -> bytes:
    out = bytearray(data)
    at = info_at(data, name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    if ne0 is not None:
        struct.pack_into("<Q", out, at + 4, ne0)
    if type_id is not None:
        struct.pack_into("<I", out, at + 4 + 8 * n_dims, type_id)
    return bytes(out)


def write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    return str(path)


def test_a_truncated_k_quant_tensor_is_named(tmp_path, q4_k_m):
    # Cut the file inside the data of its last tensor.
    _, tensors, _, _ = _core.read_gguf(write(tmp_path, q4_k_m), 0)
    assert any(t[1] == "Q4_K" for t in tensors)
    path = write(tmp_path, q4_k_m[: len(q4_k_m) - 1000])
    with pytest.raises(GGUFError, match="tensor '.*': data"):
        Engine(path)


def test_a_row_that_is_not_whole_blocks_is_named(tmp_path, q4_k_m):
    path = write(tmp_path, patch(q4_k_m, TENSOR, ne0=300))  # Q4_K blocks hold 256 values
    with pytest.raises(GGUFError, match=TENSOR):
        Engine(path)


def test_an_unknown_type_id_is_named(tmp_path, q4_k_m):
    path = write(tmp_path, patch(q4_k_m, TENSOR, type_id=99))
    with pytest.raises(GGUFError, match=f"tensor '{TENSOR}': unknown or unsupported ggml type 99"):
        Engine(path)


def test_a_type_the_kernels_do_not_compute_is_named_by_load_and_show(tmp_path, q4_k_m):
    # IQ2_XXS (16): the reader knows its blocks (66 bytes per 256 values, so the data still
    # fits), the kernels do not compute it.
    path = write(tmp_path, patch(q4_k_m, TENSOR, type_id=16))
    with pytest.raises(ModelError, match=f"tensor '{TENSOR}' has type IQ2_XXS, which this engine "
                                         "cannot compute with yet"):
        Engine(path)
    shown = subprocess.run([sys.executable, "-m", "pyengine", "show", path], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)  # not the source tree
    assert shown.returncode == 0, shown.stderr
    line = next(row for row in shown.stdout.splitlines() if row.strip().startswith("supported"))
    assert f"no (tensor '{TENSOR}' has type IQ2_XXS" in line


def test_every_lane_type_is_supported_by_show(q4_k_m, tmp_path):
    shown = subprocess.run([sys.executable, "-m", "pyengine", "show", write(tmp_path, q4_k_m)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = next(row for row in shown.stdout.splitlines() if row.strip().startswith("supported"))
    assert line.split()[-1] == "yes"
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
            "IQ4_XS", "Q8_0", "F16", "BF16", "F32"} == set(_core.weight_types())
