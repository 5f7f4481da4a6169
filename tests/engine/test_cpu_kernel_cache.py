"""The kernel cache loads only a library no other user can have written."""

from __future__ import annotations

import logging
import os
import shutil
import stat

import pytest
import torch

from ownllm.engine import cpu_kernels

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")

# Writes a stand-in library at once: these tests are about where it is written and loaded.
FAKE_CC = """#!/bin/sh
[ "$1" = --version ] && { echo fake-cc 1; exit 0; }
while [ $# -gt 0 ]; do [ "$1" = -o ] && { shift; echo library > "$1"; }; shift; done
"""


@pytest.fixture(autouse=True)
def fake_compiler(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("cc") / "cc"
    path.write_text(FAKE_CC)
    path.chmod(0o755)
    monkeypatch.setenv("CC", str(path))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_cache_dir_is_private_and_its_library_is_reused(tmp_path):
    directory = tmp_path / "cache" / "kernels"
    library = cpu_kernels.build(directory)
    assert library.parent == directory and mode(directory) == 0o700
    assert not mode(library) & 0o022
    assert cpu_kernels.build(directory) == library


def test_a_library_others_may_have_written_is_compiled_again(tmp_path, caplog):
    library = cpu_kernels.build(tmp_path)
    os.chmod(library, 0o666)
    planted = os.stat(library).st_ino
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.build(tmp_path) == library
    assert os.stat(library).st_ino != planted and not mode(library) & 0o022
    assert "writable by group or others" in caplog.text


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_library_owned_by_another_user_is_compiled_again(tmp_path, caplog):
    library = cpu_kernels.build(tmp_path)
    os.chown(library, 4242, -1)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.build(tmp_path) == library
    assert os.stat(library).st_uid == os.getuid()
    assert "owned by uid 4242" in caplog.text


def test_a_shared_cache_dir_is_not_used(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        library = cpu_kernels.build(shared)
    try:
        assert library.parent != shared and mode(library.parent) == 0o700
        assert list(shared.iterdir()) == []
        assert f"kernel cache {shared} is not private" in caplog.text
    finally:
        shutil.rmtree(library.parent)


def test_a_symbolic_link_in_the_cache_is_compiled_again(tmp_path, caplog):
    library = cpu_kernels.build(tmp_path)
    elsewhere = tmp_path / "elsewhere.so"
    os.replace(library, elsewhere)
    library.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.build(tmp_path) == library
    assert not library.is_symlink() and "a symbolic link" in caplog.text


def test_a_group_writable_cache_dir_is_not_used(tmp_path, caplog):
    shared = tmp_path / "team"
    shared.mkdir(mode=0o700)
    os.chmod(shared, 0o770)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        library = cpu_kernels.build(shared)
    try:
        assert library.parent != shared and list(shared.iterdir()) == []
        assert "writable by group or others" in caplog.text
    finally:
        shutil.rmtree(library.parent)


def test_a_hung_compiler_is_stopped_and_torch_is_used(tmp_path, monkeypatch, caplog):
    hung = tmp_path / "hung-cc"
    hung.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo hung-cc 1; exit 0; }\nsleep 600\n')
    hung.chmod(0o755)
    monkeypatch.setenv("CC", str(hung))
    monkeypatch.setenv("OWNLLM_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(cpu_kernels, "COMPILE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(cpu_kernels, "_library", cpu_kernels._library.__wrapped__)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.load(torch.float32, torch.device("cpu"), 4, 2) is None
    assert "ran past 0.5s" in caplog.text and "using the torch path" in caplog.text
    assert list((tmp_path / "kernels").iterdir()) == [], "the temporary library was left behind"
