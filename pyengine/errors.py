"""Exception classes of pyengine (defined by the native core, re-exported here).

- ``PyEngineError``: base class of every engine error (a ``RuntimeError``).
- ``GGUFError``: a corrupt, truncated, hostile or unreadable GGUF file; also a ``ValueError``.
  The message names the file and the defect.
- ``ModelError``: a readable file whose model the engine cannot run (architecture, tensor type).
"""

from pyengine._core import GGUFError, ModelError, PyEngineError

__all__ = ["PyEngineError", "GGUFError", "ModelError"]
