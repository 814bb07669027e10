"""Gemma 4's model names wherever a tier model name goes: the committed registry and its cards,
Ollama's store layout (``manifests/registry.ollama.ai/library/gemma4/<tag>``), the tier
configuration and router, the servers' model lists and tier names, and ``pyengine show``.

The GGUF behind the names is the synthetic ``tiny-4`` model (architecture ``gemma4``): names
and routing do not depend on a model's size.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import pytest

from pyengine import _core
from pyengine.cli import main as cli_main
from pyengine.gateway.config import Config
from pyengine.gateway.routing import Tier, select_model, tier_model
from pyengine.gateway.store import ModelStore, parse_name
from pyengine.server import create_app
from pyengine.server.testing import ServerThread

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
TAGS = ["e2b", "e4b", "26b", "31b", "latest"]
# The tier each Gemma 4 model suits, as the registry and the cards say.
TIERS = {"gemma4:e2b": "primary", "gemma4:e4b": "quality", "gemma4:latest": "quality",
         "gemma4:26b": "alternative", "gemma4:31b": "quality"}
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"


def ollama_pull(root: Path, tag: str, model: bytes) -> str:
    """Lays out ``gemma4:<tag>`` as ``ollama pull`` does; returns the model blob's hex digest."""
    hexdigest = hashlib.sha256(model).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{hexdigest}").write_bytes(model)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "gemma4" / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{hexdigest}", "size": len(model)}]}))
    return hexdigest


@pytest.fixture(scope="module")
def gemma4_file(make_model) -> Path:
    return make_model("tiny-4", "f32")


@pytest.fixture
def ollama_store(tmp_path, gemma4_file) -> tuple[Path, dict[str, str]]:
    """An Ollama store holding every gemma4 tag (each its own blob, as each tag is its own
    model); the digests by tag."""
    root = tmp_path / "ollama"
    data = gemma4_file.read_bytes()
    digests = {tag: ollama_pull(root, tag, data + tag.encode()) for tag in TAGS}
    return root, digests


# -- registry and cards ---------------------------------------------------------------------

def test_the_registry_lists_gemma4_with_cards():
    entries = json.loads((MODELS / "registry.json").read_text())["models"]
    for name, tier in TIERS.items():
        entry = entries[name]
        assert entry["tier"] == tier and entry["file"].endswith("-q4_k_m.gguf")
        card = (MODELS / entry["card"]).read_text()
        title = card.splitlines()[0]
        assert title.startswith(f"# {name}") or f"also {name}" in title, title
        assert f"suits the {tier} tier" in title
        # What each card must say: the architecture, Ollama's quantization, the context length.
        assert "`gemma4`" in card and "Q4_K_M" in card and "Context length" in card
        assert re.search(r"\| Parameters \| about [\d.]+ billion", card)
    # gemma4:latest is the E4B, as Ollama lists it.
    assert entries["gemma4:latest"]["file"] == entries["gemma4:e4b"]["file"]
    moe = (MODELS / entries["gemma4:26b"]["card"]).read_text()
    assert "mixture-of-experts" in moe and "about 4 billion (3.8B) active per token" in moe
    assert "262,144 tokens (256K)" in moe
    for small in ("gemma4:e2b", "gemma4:e4b"):
        assert "131,072 tokens (128K)" in (MODELS / entries[small]["card"]).read_text()


@pytest.mark.parametrize("tag", TAGS)
def test_gemma4_names_resolve_in_ollamas_store(ollama_store, tag):
    root, digests = ollama_store
    store = ModelStore(MODELS, root)  # the committed registry: its files are not here
    ref = store.resolve(f"gemma4:{tag}")
    assert ref.source == "ollama" and ref.digest == digests[tag]
    assert ref.path == root / "blobs" / f"sha256-{digests[tag]}"
    assert ref.tier == TIERS[f"gemma4:{tag}"]  # the registry's tier and card still apply
    assert ref.card is not None and ref.card.parent == MODELS / "cards"
    # The same model under Ollama's other spellings of the name.
    for spelling in (f"library/gemma4:{tag}", f"registry.ollama.ai/library/gemma4:{tag}"):
        assert store.resolve(spelling).path == ref.path
    assert parse_name(f"gemma4:{tag}").manifest_path(root).is_file()


def test_the_bare_name_is_latest_and_listing_shows_every_tag(ollama_store):
    root, digests = ollama_store
    store = ModelStore(MODELS, root)
    assert store.resolve("gemma4").digest == digests["latest"]
    listed = {r.name: r for r in store.list()}
    assert {f"gemma4:{t}" for t in TAGS} <= set(listed)
    assert all(listed[f"gemma4:{t}"].tier == TIERS[f"gemma4:{t}"] for t in TAGS)


# -- configuration and routing --------------------------------------------------------------

def test_tier_variables_take_gemma4_names():
    config = Config.from_env({"OLLAMA_PRIMARY_MODEL": "gemma4:e2b",
                              "OLLAMA_FAST_MODEL": "gemma3:1b",
                              "OLLAMA_QUALITY_MODEL": "gemma4:31b",
                              "OLLAMA_ALTERNATIVE_MODEL": "gemma4:26b",
                              "MODEL_SELECTION_LOGGING": "false"})
    assert [tier_model(t, config) for t in Tier] == ["gemma3:1b", "gemma4:e2b", "gemma4:26b",
                                                     "gemma4:31b"]
    assert select_model({"priority": 5, "estimated_tokens": 500}, config).model == "gemma4:e2b"
    assert select_model({"priority": 9}, config).model == "gemma4:31b"
    assert select_model({"type": "code_generation", "estimated_tokens": 500},
                        config).model == "gemma4:26b"
    assert select_model({"complexity": "simple"}, config).model == "gemma3:1b"


# -- servers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(gemma4_file):
    config = Config(primary_model="gemma4:e2b", quality_model="gemma4", selection_logging=False)
    models = {f"gemma4:{tag}": gemma4_file for tag in ("e2b", "latest")}
    # One model in memory at a time: /api/ps then names the model that served the last request.
    with ServerThread(create_app(models, n_ctx=512, kv_cache_mb=32, keep_alive=-1, max_loaded=1,
                                 config=config, fallback=False)) as s:
        yield s


def test_servers_list_gemma4_models(server):
    tags = httpx.get(server.url + "/api/tags", timeout=60).json()["models"]
    assert {m["name"] for m in tags} == {"gemma4:e2b", "gemma4:latest"}
    assert all(m["details"]["family"] == "gemma4" for m in tags)
    ids = {m["id"] for m in httpx.get(server.url + "/v1/models", timeout=60).json()["data"]}
    assert ids == {"gemma4:e2b", "gemma4:latest"}
    shown = httpx.post(server.url + "/api/show", json={"model": "gemma4"}, timeout=60).json()
    assert shown["model_info"]["general.architecture"] == "gemma4"


@pytest.mark.parametrize("asked, served", [("primary", "gemma4:e2b"),
                                           ("quality", "gemma4:latest"),
                                           ("GEMMA4:E2B", "gemma4:e2b"),
                                           ("gemma4", "gemma4:latest")])
def test_tier_names_reach_gemma4_models(server, asked, served):
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": asked, "prompt": "Hi", "stream": False,
        "options": {"num_predict": 2, "temperature": 0}})
    assert r.status_code == 200, r.text
    loaded = [m["name"] for m in httpx.get(server.url + "/api/ps", timeout=60).json()["models"]]
    assert loaded == [served]


# -- pyengine show --------------------------------------------------------------------------

def test_pyengine_show_gemma4(ollama_store, monkeypatch, capsys):
    root, digests = ollama_store
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("PYENGINE_MODELS", str(MODELS))
    assert cli_main(["show", "gemma4:26b"]) == 0
    out = capsys.readouterr().out
    rows = {line[4:32].strip(): line[32:].strip() for line in out.splitlines()
            if line.startswith("    ")}
    assert rows["architecture"] == "gemma4"
    assert rows["found in"] == "Ollama's store as gemma4:26b"
    assert rows["tier"] == "alternative"
    assert rows["card"] == str(MODELS / "cards" / "gemma4-26b.md")
    assert rows["digest"] == f"sha256:{digests['26b']}"
    assert rows["chat format"] == "Gemma 4 turns, native tool calls"
    if "gemma4" in _core.architectures():
        assert rows["supported"] == "yes"
