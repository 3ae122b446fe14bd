"""telemon.files.write_atomically on a real file system."""

from __future__ import annotations

import os
import stat

import pytest

from telemon.files import write_atomically


@pytest.mark.parametrize("durable", [True, False])
def test_a_file_is_replaced_whole_and_owner_only(tmp_path, durable):
    path = tmp_path / "new" / "folder" / "bundle.json"  # folders made as needed
    write_atomically(path, b"first", durable=durable)
    write_atomically(path, b"second", durable=durable)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["bundle.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    write_atomically(path, b"old")

    def no_rename(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["status.json"]


def test_an_existing_world_readable_file_becomes_owner_only(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_atomically(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
