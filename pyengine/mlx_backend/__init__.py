"""The MLX backend (Apple GPUs through MLX; mlx[cpu] elsewhere), behind the same ``Engine``.

Importing pyengine never imports mlx: this package's modules are loaded only when the backend
is asked for. ``pip install "pyengine[mlx]"`` installs mlx and mlx-lm.
"""

from __future__ import annotations

import importlib.util
import platform
import sys

EXTRA_HINT = 'the MLX backend needs mlx and mlx-lm: pip install "pyengine[mlx]"'


def available() -> bool:
    """Whether mlx and mlx-lm are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm"))


def preferred() -> bool:
    """What ``backend="auto"`` picks MLX for: Apple silicon with mlx installed."""
    return sys.platform == "darwin" and platform.machine() == "arm64" and available()


def core_class() -> type:
    """``MlxCore``, imported on demand; ImportError naming the extra when mlx is missing."""
    if not available():
        raise ImportError(EXTRA_HINT)
    from pyengine.mlx_backend.core import MlxCore

    return MlxCore
