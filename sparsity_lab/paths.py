"""Where the library keeps what it builds once (checkpoints, compiled kernels, results), and
how it writes a file that another process may be reading."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX; elsewhere two processes may each compute what one would do (never a wrong result)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["default_cache_dir", "exclusive", "write_atomically"]


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


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold a lock on ``path`` between processes while the block runs.

    For a cache entry that is expensive to compute: the first process to want it computes
    it, the others wait here, then find the file written (look again inside the block
    before computing).  The lock is an ``flock`` on a hidden ``.<name>.lock`` file beside
    ``path``, released by the kernel even when the process dies.  Where ``fcntl`` is
    missing, the lock file cannot be made or its file system refuses locks, the block runs
    unlocked: two processes may then both compute the same entry, never a wrong one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.parent / f".{path.name}.lock", "a")
    except OSError:  # a read-only directory: nothing computed could be kept there anyway
        handle = None
    if fcntl is None or handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            locked = True
        except OSError:  # a file system without locks (some network mounts)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
