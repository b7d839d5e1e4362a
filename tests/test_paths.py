"""Writing files that another process may be reading: whole or not at all."""

import contextlib
import os
import stat
import threading
import time

import pytest

from sparsity_lab import paths


@pytest.mark.parametrize("durable", [False, True])
def test_write_atomically_writes_the_whole_file_with_normal_permissions(tmp_path, durable):
    target = tmp_path / "new" / "folder" / "file.json"  # missing folders are made
    paths.write_atomically(target, b"first", durable=durable)
    paths.write_atomically(target, b"second, longer", durable=durable)
    assert target.read_bytes() == b"second, longer"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.csv"
    paths.write_atomically(target, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        paths.write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.csv"]


def _second_waits_for_first(enter_first, enter_second, target):
    """Run two blocks in threads, the second started while the first holds its lock; the
    first writes ``target`` after a pause.  Returns whether the second saw the file."""
    holding, seen = threading.Event(), []

    def first():
        with enter_first():
            holding.set()
            time.sleep(0.3)
            target.write_text("done")

    def second():
        holding.wait()
        with enter_second():
            seen.append(target.exists())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen == [True]


def test_exclusive_makes_a_second_holder_wait_for_the_first(tmp_path):
    target = tmp_path / "entry.json"
    assert _second_waits_for_first(
        lambda: paths.exclusive(target), lambda: paths.exclusive(target), target
    )
    # the check can fail: without the lock the second does not wait
    other = tmp_path / "other.json"
    assert not _second_waits_for_first(
        lambda: paths.exclusive(other), contextlib.nullcontext, other
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".entry.json.lock",
        ".other.json.lock",
        "entry.json",
        "other.json",
    ]


def test_exclusive_runs_unlocked_where_no_lock_file_can_be_made(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(paths, "open", refuse, raising=False)
    ran = []
    with paths.exclusive(tmp_path / "entry.json"):
        ran.append(True)
    assert ran == [True]
    assert list(tmp_path.iterdir()) == []


def test_exclusive_runs_unlocked_where_the_file_system_refuses_locks(tmp_path, monkeypatch):
    def refuse(fd, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(paths.fcntl, "flock", refuse)
    ran = []
    with paths.exclusive(tmp_path / "entry.json"):
        ran.append(True)
    assert ran == [True]
