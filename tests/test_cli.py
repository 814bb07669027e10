"""The command line: ``run`` streams a reply, ``show`` describes a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyengine import Engine


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # Run outside the source tree so the installed package (with its extension) is imported.
    return subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parent)


def test_run_streams_the_chat_reply(tiny_f32):
    proc = run_cli("run", str(tiny_f32), "Hello there", "--max-tokens", "12", "--temperature",
                   "0", "--verbose")
    assert proc.returncode == 0, proc.stderr
    eng = Engine(tiny_f32, n_ctx=4096)
    expected = eng.chat([{"role": "user", "content": "Hello there"}], max_tokens=12,
                        temperature=0).text
    assert proc.stdout == expected + "\n"
    assert "tokens/s" in proc.stderr


def test_show_prints_model_facts(tiny_f32):
    proc = run_cli("show", str(tiny_f32))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    cfg = Engine(tiny_f32).config
    for label, value in [("architecture", "gemma3"), ("layers", cfg["n_layer"]),
                         ("embedding length", cfg["n_embd"]),
                         ("sliding window", cfg["sliding_window"]), ("quantization", "F32"),
                         ("vocabulary", cfg["n_vocab"]), ("bos_token_id", 2)]:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(label))
        assert str(value) in line, line


def test_cli_errors_are_clean(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    proc = run_cli("show", str(bad))
    assert proc.returncode == 1 and "Error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run", str(tmp_path / "missing.gguf"), "hi")
    assert proc.returncode == 1 and "model not found" in proc.stderr


def test_show_marks_gemma3n_supported(make_model):
    proc = run_cli("show", str(make_model("tiny-3n", "q8_0")))
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.strip()}
    assert "gemma3n" in lines["architecture"] and lines["supported"].split()[-1] == "yes"
