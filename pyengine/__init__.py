"""pyengine: a native-accelerated inference engine for Gemma models."""

from .engine import Chunk, Completion, Engine
from .errors import GGUFError, ModelError, PyEngineError
from .gateway import Gateway, complete

__all__ = ["Engine", "Completion", "Chunk", "PyEngineError", "GGUFError", "ModelError",
           "Gateway", "complete"]
__version__ = "0.1.0"
