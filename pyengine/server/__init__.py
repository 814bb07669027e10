"""An Ollama-compatible HTTP server of GGUF models (FastAPI + uvicorn).

``create_app({"gemma": "gemma.gguf"})`` builds the app; ``python -m pyengine serve`` runs it.
"""

from .app import create_app
from .models import ModelNotFound, ModelSet

__all__ = ["ModelNotFound", "ModelSet", "create_app"]
