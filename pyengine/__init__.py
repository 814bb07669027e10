"""pyengine: a native-accelerated inference engine for Gemma models."""

__version__ = "0.1.0"


def _core_missing(error: ImportError) -> ImportError:
    """The error for a package whose native core cannot be imported, saying what to do."""
    from pathlib import Path

    here = Path(__file__).parent
    if not any(here.glob("_core*")):
        # Python picked this folder (the source checkout, first on sys.path) over the
        # installed package, and found no built core in it.
        return ImportError(
            f"pyengine's native core is not in {here}: this is pyengine's source folder, which "
            "Python imports before the installed package when run from the checkout. Run from "
            "another folder, or install in place: pip install -e . (the core is then built "
            "for this folder).")
    return ImportError(f"pyengine's native core cannot be loaded: {error}")


try:
    from pyengine import _core  # noqa: F401  (first: everything below needs it)
except ImportError as _e:
    # Not chained: Python's own words for this case ("circular import") mislead.
    raise _core_missing(_e) from None

from pyengine.engine import Chunk, Completion, Engine  # noqa: E402
from pyengine.errors import GGUFError, ModelError, PyEngineError  # noqa: E402
from pyengine.gateway.front_door import Gateway, complete  # noqa: E402

__all__ = ["Engine", "Completion", "Chunk", "PyEngineError", "GGUFError", "ModelError",
           "Gateway", "complete"]
