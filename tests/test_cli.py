"""The command line: ``run`` streams a reply, ``show`` describes a model."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyengine
from pyengine import Engine, cli
from pyengine.gateway import store
from pyengine.server import serve as serve_module


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


def test_run_with_a_format(tiny_f32, tmp_path):
    """--format json, a schema inline and @FILE: the reply parses (and validates); a bad schema
    is an error message and exit status 1, not a traceback."""
    import json

    import jsonschema

    schema = {"type": "object", "required": ["n"], "additionalProperties": False,
              "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    for fmt in ("json", json.dumps(schema), f"@{tmp_path / 'schema.json'}"):
        proc = run_cli("run", str(tiny_f32), "A number?", "--max-tokens", "40",
                       "--temperature", "1", "--seed", "3", "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        value = json.loads(proc.stdout)
        if fmt != "json":
            jsonschema.validate(value, schema)
    proc = run_cli("run", str(tiny_f32), "x", "--format", '{"type": "nonsense"}')
    assert proc.returncode == 1 and "nonsense" in proc.stderr and "Traceback" not in proc.stderr


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


def test_show_into_a_closed_pipe_is_quiet(tiny_f32):
    # `pyengine show M | head -1`: the reader is gone before the output is written.
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "pyengine", "show", str(tiny_f32)],
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=300,
                              cwd=Path(__file__).parent)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == ""


def test_list_without_models_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYENGINE_MODELS", str(tmp_path / "registry"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setattr(store, "PACKAGED_MODELS", {"gemma3:270m": "no_such_module_here"})
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No models found.")
    for place in (str(tmp_path / "registry"), str(tmp_path / "ollama"), "PYENGINE_MODELS",
                  "OLLAMA_MODELS", "gemma3:270m (pip install no-such-module-here)"):
        assert place in out


def test_serve_says_what_it_serves(tiny_f32, monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(serve_module, "serve",
                        lambda models, host, port, **kw: served.update(models, at=(host, port)))
    assert cli.main(["serve", f"tiny={tiny_f32}", "--port", "12345"]) == 0
    err = capsys.readouterr().err
    assert served == {"tiny": Path(tiny_f32), "at": ("127.0.0.1", 12345)}
    assert "serving on http://127.0.0.1:12345" in err and f"  tiny: {tiny_f32}" in err


def test_help_is_plain_text_with_defaults():
    top = cli.build_parser().format_help()
    assert "``" not in top and "COMMAND --help" in top
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = sub.choices["run"].format_help().split("\noptions:\n", 1)[1]
    for option, default in [("--max-tokens", 256), ("--temperature", 0.8), ("--top-k", 40),
                            ("--top-p", 0.9), ("--ctx", 4096)]:
        entry = options[options.index("  " + option + " "):].split("\n  -", 1)[0]
        assert f"(default: {default})" in " ".join(entry.split()), entry
    for name, action_parser in sub.choices.items():
        text = action_parser.format_help()
        assert "``" not in text, name
        # Every option says what it does.
        for action in action_parser._actions:
            assert action.help, (name, action.dest)


def test_the_source_folder_without_a_built_core_says_what_to_do(tmp_path):
    # The package's Python files with no extension beside them, first on sys.path: what
    # `python -m pyengine` meets in a checkout after a (non-editable) `pip install .`.
    src = Path(pyengine.__file__).parent
    shutil.copytree(src, tmp_path / "pyengine",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    proc = subprocess.run([sys.executable, "-S", "-m", "pyengine", "list"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert "pip install -e ." in proc.stderr and "source folder" in proc.stderr
    assert "circular import" not in proc.stderr
