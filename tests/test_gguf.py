"""The GGUF reader: every metadata type, v2 and v3, and bad files raise GGUFError, never crash."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gguf_builder import (ARRAY, BOOL, F32, F64, I8, I16, I32, I64, STRING, U8, U16, U32, U64,
                          build_gguf)
from pyengine import Engine, GGUFError, ModelError, PyEngineError, _core

ALL_TYPES_KVS = [
    ("general.architecture", STRING, "testarch"),
    ("t.u8", U8, 200), ("t.i8", I8, -100), ("t.u16", U16, 60000), ("t.i16", I16, -30000),
    ("t.u32", U32, 4_000_000_000), ("t.i32", I32, -2_000_000_000), ("t.f32", F32, 1.5),
    ("t.bool", BOOL, True), ("t.str", STRING, "héllo ✓"), ("t.u64", U64, 2**63 + 5),
    ("t.i64", I64, -(2**62)), ("t.f64", F64, 2.25),
    ("t.arr_i32", ARRAY, (I32, [1, -2, 3])),
    ("t.arr_str", ARRAY, (STRING, ["a", "", "ü"])),
    ("t.nested", ARRAY, (ARRAY, [(U8, [1, 2]), (F32, [0.5]), (STRING, ["x"])])),
    ("t.empty", ARRAY, (F64, [])),
    ("t.arr_u64", ARRAY, (U64, [2**64 - 1, 2**53 + 1])),
    ("t.arr_i64", ARRAY, (I64, [-(2**63), 2**53 + 1])),
]
TENSORS = [("w", [4, 2], 0, np.arange(8, dtype=np.float32).tobytes()),
           ("v", [32], 1, np.ones(32, dtype=np.float16).tobytes())]


def write(tmp_path: Path, data: bytes, name: str = "f.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("version", [2, 3])
def test_reads_every_metadata_type(tmp_path, version):
    path = write(tmp_path, build_gguf(ALL_TYPES_KVS, TENSORS, version=version))
    meta, tensors, lengths, info = _core.read_gguf(path)
    assert info["version"] == version
    assert meta["t.u8"] == 200 and meta["t.i8"] == -100
    assert meta["t.u16"] == 60000 and meta["t.i16"] == -30000
    assert meta["t.u32"] == 4_000_000_000 and meta["t.i32"] == -2_000_000_000
    assert meta["t.f32"] == 1.5 and meta["t.bool"] is True and meta["t.str"] == "héllo ✓"
    assert meta["t.u64"] == 2**63 + 5 and meta["t.i64"] == -(2**62) and meta["t.f64"] == 2.25
    assert meta["t.arr_i32"] == [1, -2, 3] and meta["t.arr_str"] == ["a", "", "ü"]
    assert meta["t.nested"] == [[1, 2], [0.5], ["x"]]
    assert meta["t.empty"] == [] and lengths["t.arr_str"] == 3
    # 64-bit integers come back exactly (not through a double)
    assert meta["t.arr_u64"] == [2**64 - 1, 2**53 + 1]
    assert meta["t.arr_i64"] == [-(2**63), 2**53 + 1]
    assert tensors == [("w", "F32", [4, 2], 32), ("v", "F16", [32], 64)]


def test_unknown_architecture_is_named(tmp_path):
    path = write(tmp_path, build_gguf(ALL_TYPES_KVS, TENSORS))
    with pytest.raises(ModelError, match="testarch"):
        Engine(path)


def test_missing_file_and_not_gguf(tmp_path):
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "absent.gguf")
    path = write(tmp_path, b"not a gguf file at all, just text" * 4)
    with pytest.raises(GGUFError, match="bad magic"):
        _core.read_gguf(path)


def hostile_cases() -> dict[str, bytes]:
    good = build_gguf(ALL_TYPES_KVS, TENSORS)
    header = struct.pack("<IIQQ", 0x46554747, 3, 0, 1)
    key = struct.pack("<Q", 1) + b"k"
    cases = {
        "version 1": struct.pack("<IIQQ", 0x46554747, 1, 0, 0) + b"\0" * 16,
        "version 99": struct.pack("<IIQQ", 0x46554747, 99, 0, 0) + b"\0" * 16,
        "huge tensor count": struct.pack("<IIQQ", 0x46554747, 3, 2**62, 0) + b"\0" * 64,
        "huge kv count": struct.pack("<IIQQ", 0x46554747, 3, 0, 2**62) + b"\0" * 64,
        "huge key length": header + struct.pack("<Q", 2**63) + b"\0" * 32,
        "huge string": header + key + struct.pack("<IQ", STRING, 2**60) + b"abc",
        "huge array": header + key + struct.pack("<IIQ", ARRAY, U32, 2**61) + b"\0" * 8,
        "huge string array": header + key + struct.pack("<IIQ", ARRAY, STRING, 2**40) + b"\0" * 64,
        "bad value type": header + key + struct.pack("<I", 77) + b"\0" * 16,
        "bad array elem type": header + key + struct.pack("<IIQ", ARRAY, 99, 1) + b"\0" * 16,
        "bad bool": header + key + struct.pack("<IB", BOOL, 7) + b"\0" * 16,
        "deep nesting": header + key + struct.pack("<I", ARRAY)
        + struct.pack("<IQ", ARRAY, 1) * 200 + struct.pack("<IQ", U8, 0),
        "duplicate key": build_gguf([("a", U8, 1), ("a", U8, 2)], []),
        "bad alignment": build_gguf([("general.alignment", U32, 3)], []),
        "zero alignment": build_gguf([("general.alignment", U32, 0)], []),
        "5 dims": build_gguf([], [("t", [1, 1, 1, 1, 1], 0, b"\0" * 4)]),
        "zero dim": build_gguf([], [("t", [0, 4], 0, b"")]),
        "huge dims": build_gguf([], [("t", [2**40, 2**40], 0, b"\0" * 32)]),
        "unknown tensor type": build_gguf([], [("t", [32], 200, b"\0" * 32)]),
        "ragged q8_0 row": build_gguf([], [("t", [33], 8, b"\0" * 64)]),
        "duplicate tensor": build_gguf([], [("t", [8], 0, b"\0" * 32), ("t", [8], 0, b"\0" * 32)]),
        "truncated data": good[: len(good) - 40],
    }
    # A tensor whose offset points past the data section, and one not aligned.
    past = bytearray(build_gguf([], [("t", [8], 0, b"\0" * 32)]))
    off_at = past.index(b"t") + 1 + 4 + 8 + 4
    cases["offset past end"] = bytes(past[:off_at] + struct.pack("<Q", 2**40) + past[off_at + 8:])
    cases["misaligned offset"] = bytes(past[:off_at] + struct.pack("<Q", 3) + past[off_at + 8:])
    return cases


@pytest.mark.parametrize("name,data", sorted(hostile_cases().items()))
def test_hostile_files_raise_gguf_error(tmp_path, name, data):
    path = write(tmp_path, data)
    with pytest.raises(GGUFError) as err:
        _core.read_gguf(path)
    assert path in str(err.value)  # the message names the file
    with pytest.raises((GGUFError, ModelError)):
        Engine(path)


def test_every_truncation_raises(tmp_path):
    good = build_gguf(ALL_TYPES_KVS, TENSORS)
    path = tmp_path / "t.gguf"
    for cut in range(len(good)):
        path.write_bytes(good[:cut])
        with pytest.raises(GGUFError):
            _core.read_gguf(str(path))


def test_empty_file(tmp_path):
    with pytest.raises(GGUFError, match="too small"):
        _core.read_gguf(write(tmp_path, b""))


FUZZ = textwrap.dedent('''
    import random, sys
    tests, src, dst, seed, n, engine = sys.argv[1:7]
    sys.path.insert(0, tests)
    from gguf_builder import mutate
    from pyengine import Engine, PyEngineError, _core
    data = open(src, "rb").read()
    rng = random.Random(int(seed))
    ok = bad = 0
    for i in range(int(n)):
        open(dst, "wb").write(mutate(data, 1 << 16, rng))
        try:
            if engine == "1":
                eng = Engine(dst, n_ctx=64)
                eng.logits(eng.tokenize("fuzz")[:8])
            else:
                _core.read_gguf(dst)
            ok += 1
        except PyEngineError:
            bad += 1
    print(ok, bad)
''')


@pytest.mark.parametrize("engine", [False, True, "q4_k_m"])
def test_fuzzed_files_never_crash(tmp_path, tiny_f32, quant_model, engine):
    """Random byte flips and truncations: the process survives and errors are PyEngineErrors
    (also on a file of K-quant and 32-value quantized blocks, llama.cpp's Q4_K_M mix)."""
    if engine == "q4_k_m":
        src = quant_model("tiny-k", "Q4_K_M")
    else:
        src = tiny_f32 if engine else write(tmp_path, build_gguf(ALL_TYPES_KVS, TENSORS), "src.gguf")
    n = 300 if engine else 3000
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(Path(__file__).parent), str(src),
                           str(tmp_path / "m.gguf"), "7",
                           str(n), "1" if engine else "0"], capture_output=True, text=True,
                          cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, f"fuzz run died: {proc.returncode} {proc.stderr[-2000:]}"
    ok, bad = map(int, proc.stdout.split())
    assert ok + bad == n and bad > 0
