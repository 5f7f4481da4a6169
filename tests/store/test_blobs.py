"""The data directory is private to the user that runs ownllm."""

from __future__ import annotations

import os
import stat

import pytest

from ownllm.store.blobs import DataDir

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual default, under which older versions made 0755 and 0644
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_data_dir_is_0700_and_files_written_in_it_are_0600(tmp_path, umask_022):
    data_dir = DataDir(tmp_path / "home").ensure()
    for path in (data_dir.root, data_dir.files, data_dir.adapters, data_dir.tmp):
        assert mode(path) == 0o700, path
    upload = data_dir.files / "file-1"
    upload.write_bytes(b'{"messages": []}\n')
    assert mode(upload) == 0o600
    with data_dir.atomic_dir(data_dir.adapters / "a1") as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"x")
    assert mode(data_dir.adapters / "a1") == 0o700
    assert mode(data_dir.adapters / "a1" / "adapter_model.safetensors") == 0o600


def test_an_old_0755_data_dir_of_this_user_is_tightened(tmp_path, umask_022):
    root = tmp_path / "home"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    DataDir(root).ensure()
    assert mode(root) == 0o700


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o277)
    try:
        DataDir(tmp_path / "home").ensure()
        assert os.umask(0o022) == 0o277
    finally:
        os.umask(old)
