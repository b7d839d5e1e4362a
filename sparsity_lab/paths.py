"""Where the library keeps what it builds once (checkpoints, compiled kernels, results), and
how it writes a file that another process may be reading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["default_cache_dir", "write_atomically"]


def default_cache_dir() -> Path:
    """``$SPARSITY_LAB_CACHE`` or ``~/.cache/sparsity-lab``."""
    return Path(os.environ.get("SPARSITY_LAB_CACHE", Path.home() / ".cache" / "sparsity-lab"))


def write_atomically(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place.

    A reader sees the old file or the whole new one, never half of it; a crash leaves no
    half-written file behind; two processes writing the same path never share a temporary
    name (the last rename wins).  The file gets the permissions of one made with ``open``.
    ``durable`` also flushes the data to the disk before the rename, for a cache that must
    survive a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a normal file is wanted
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
