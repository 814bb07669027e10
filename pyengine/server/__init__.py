"""An Ollama-compatible HTTP server of GGUF models (FastAPI + uvicorn).

``create_app({"gemma": "gemma.gguf"})`` builds the app; ``python -m pyengine serve`` runs it.
"""

from pyengine.server.app import create_app
from pyengine.pool import ModelNotFound, ModelPool

__all__ = ["ModelNotFound", "ModelPool", "create_app"]
