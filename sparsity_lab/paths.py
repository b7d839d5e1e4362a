"""Where the library keeps what it builds once: checkpoints, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SPARSITY_LAB_CACHE`` or ``~/.cache/sparsity-lab``."""
    return Path(os.environ.get("SPARSITY_LAB_CACHE", Path.home() / ".cache" / "sparsity-lab"))
