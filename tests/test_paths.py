"""Writing files that another process may be reading: whole or not at all."""

import os
import stat

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
