#!/usr/bin/env python3
"""Lay out a GGUF file in an Ollama model store the way ``ollama pull`` writes one.

No Ollama registry can be reached here, so this writes what a pull leaves on disk, around a
local GGUF file, for checking that pyengine finds and runs models pulled with Ollama:

    python scripts/ollama_store.py --models ~/.ollama/models gemma3:270m gemma-3-270m.gguf
    OLLAMA_MODELS=~/.ollama/models pyengine run gemma3:270m "The capital of France is" --raw

What a pull writes (Ollama's ``server/images.go`` and ``types/model``):

- ``blobs/sha256-<hex>``: every layer, and the config, named by the SHA-256 of its bytes;
- ``manifests/<host>/<namespace>/<model>/<tag>``: a Docker v2 manifest (``schemaVersion`` 2)
  whose ``config`` and ``layers`` give each blob's media type, digest and size. A library
  model's layers: ``application/vnd.ollama.image.model`` (the GGUF), ``...image.template``
  (the prompt template, Go text/template), ``...image.license`` and ``...image.params`` (JSON
  default options).

The GGUF blob is a hard link to the file where the file system allows it (a pull writes a
regular file, and pyengine refuses a blob symlinked out of its store), else a copy. The
template, license and params written here are this project's own stand-ins, not Ollama's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"

# Gemma's turn format as an Ollama template (the one pyengine's /api/show reports).
GEMMA_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n")
# Gemma's recommended sampling, and its end-of-turn marker as a stop string.
GEMMA_PARAMS = {"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}
LICENSE = ("Gemma is provided under the Gemma Terms of Use, https://ai.google.dev/gemma/terms "
           "(a stand-in written for a local test store).\n")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _blob(root: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{digest}"
    if not path.exists():
        path.write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _link_or_copy(source: Path, target: Path) -> str:
    """Hard-links ``source`` to ``target`` (a copy across file systems); "link" or "copy"."""
    if target.exists():
        return "existing"
    try:
        os.link(source, target)
        return "link"
    except OSError:
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)  # a complete blob or none, as a pull leaves it
        return "copy"


def pull(models: Path, name: str, gguf: Path, *, template: str = GEMMA_TEMPLATE,
         params: dict[str, object] | None = None, license_text: str = LICENSE,
         family: str = "gemma3", file_type: str = "Q4_K_M") -> Path:
    """Writes ``gguf`` into the Ollama store ``models`` as model ``name``
    (``[host/][namespace/]model[:tag]``) with template, license and params layers; returns the
    manifest's path."""
    parts = name.split("/")
    model, _, tag = parts[-1].partition(":")
    host = parts[0] if len(parts) == 3 else "registry.ollama.ai"
    namespace = parts[-2] if len(parts) >= 2 else "library"
    if not model or len(parts) > 3 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a model name: {name!r}")
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    digest = sha256_file(gguf)
    _link_or_copy(gguf, models / "blobs" / f"sha256-{digest}")
    layers = [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{digest}",
               "size": gguf.stat().st_size},
              _blob(models, template.encode(), TEMPLATE_MEDIA_TYPE),
              _blob(models, license_text.encode(), LICENSE_MEDIA_TYPE),
              _blob(models, json.dumps(params if params is not None else GEMMA_PARAMS).encode(),
                    PARAMS_MEDIA_TYPE)]
    config = {"model_format": "gguf", "model_family": family, "model_families": [family],
              "file_type": file_type, "architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": _blob(models, json.dumps(config).encode(), CONFIG_MEDIA_TYPE),
                "layers": layers}
    path = models / "manifests" / host / namespace / model / (tag or "latest")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True,
                    help="the store folder (what OLLAMA_MODELS names)")
    ap.add_argument("name", help="model name, e.g. gemma3:270m")
    ap.add_argument("gguf", type=Path, help="the GGUF file")
    args = ap.parse_args(argv)
    if not args.gguf.is_file():
        print(f"error: no such file: {args.gguf}", file=sys.stderr)
        return 1
    print(pull(args.models.expanduser(), args.name, args.gguf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
