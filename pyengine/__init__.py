"""pyengine: a native-accelerated inference engine for Gemma models."""

from .engine import Chunk, Completion, Engine
from .errors import GGUFError, ModelError, PyEngineError

__all__ = ["Engine", "Completion", "Chunk", "PyEngineError", "GGUFError", "ModelError"]
__version__ = "0.1.0"
