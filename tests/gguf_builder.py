"""A minimal, independent GGUF writer for tests that need exact control over every byte."""

from __future__ import annotations

import random
import struct
from typing import Any

# GGUF metadata value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype: int, value: Any) -> bytes:
    """Encodes a value; arrays are (elem_type, items) with items possibly nested arrays."""
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        etype, items = value
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(gguf_value(etype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


def build_gguf(kvs: list[tuple[str, int, Any]], tensors: list[tuple[str, list[int], int, bytes]],
               version: int = 3, alignment: int = 32) -> bytes:
    """kvs: (key, type, value); tensors: (name, ne, ggml_type, data). Returns the file bytes."""
    out = bytearray(struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        out += gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    offset = 0
    offsets = []
    for name, ne, gtype, data in tensors:
        offsets.append(offset)
        out += gguf_string(name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", gtype, offset)
        offset += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    for (_, _, _, data), off in zip(tensors, offsets):
        out += data + b"\0" * (-len(data) % alignment)
    return bytes(out)


def mutate(data: bytes, head: int, rng: random.Random) -> bytes:
    """A damaged copy of a file: 1-8 byte flips or 64-bit overwrites in its first `head` bytes,
    possibly ending in a truncation (where a file's structure lives, so parsing meets it)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind, pos = rng.random(), rng.randrange(min(head, len(buf)))
        if kind < 0.6:
            buf[pos] = rng.randrange(256)
        elif kind < 0.8:
            buf[pos:pos + 8] = rng.randrange(2**64).to_bytes(8, "little")
        else:
            del buf[pos:]
            break
    return bytes(buf)
