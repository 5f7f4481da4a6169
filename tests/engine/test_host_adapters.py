"""Host copies of adapters: read once, found where registered or resolved, LRU-bounded."""

from __future__ import annotations

import threading

import pytest

from ownllm.engine.host_adapters import HostAdapters
from ownllm.errors import InvalidRequestError, ModelNotFoundError


class Reader:
    """Stands in for reading a PEFT directory: records each read, fails on cue."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []
        self.broken: set[str] = set()

    def __call__(self, adapter_id: str, path: str) -> tuple[str, str, int]:
        if path in self.broken:
            raise InvalidRequestError(f"adapter {adapter_id!r}: bad weights")
        self.reads.append((adapter_id, path))
        return (adapter_id, path, len(self.reads))


@pytest.fixture
def dirs(tmp_path):
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    return {name: str(tmp_path / name) for name in ("a", "b", "c", "d")}


def test_a_registered_adapter_is_read_once_and_served_from_memory(dirs):
    read = Reader()
    host = HostAdapters(read, capacity=4)
    host.register("a", dirs["a"])
    assert host.get("a") == ("a", dirs["a"], 1)
    assert host.get("a") is host.get("a")
    assert read.reads == [("a", dirs["a"])]


def test_an_unknown_adapter_is_resolved_then_remembered(dirs):
    read, asked = Reader(), []

    def resolver(adapter_id: str) -> str | None:
        asked.append(adapter_id)
        return dirs.get(adapter_id)

    host = HostAdapters(read, capacity=1, resolver=resolver)
    assert host.get("a")[1] == dirs["a"]
    host.get("b")  # capacity 1: drops a's copy, keeps where it lives
    assert "a" not in host and "b" in host
    host.get("a")
    assert asked == ["a", "b"]  # a's path was remembered, not resolved again
    assert [r[0] for r in read.reads] == ["a", "b", "a"]
    with pytest.raises(ModelNotFoundError):
        host.get("nope")


def test_a_path_that_is_not_a_directory_is_model_not_found(dirs, tmp_path):
    host = HostAdapters(Reader(), capacity=2, resolver=lambda _: str(tmp_path / "gone"))
    with pytest.raises(ModelNotFoundError):
        host.get("a")
    assert len(host) == 0


def test_least_recently_used_copy_is_dropped_first(dirs):
    read = Reader()
    host = HostAdapters(read, capacity=2)
    host.register("a", dirs["a"])
    host.register("b", dirs["b"])
    host.get("a")  # a is now the most recently used
    host.register("c", dirs["c"])
    assert "a" in host and "b" not in host and "c" in host and len(host) == 2
    host.get("b")  # read again from its registered path
    assert read.reads[-1] == ("b", dirs["b"])


def test_register_replaces_the_copy_and_a_bad_adapter_changes_nothing(dirs):
    read = Reader()
    host = HostAdapters(read, capacity=4)
    host.register("a", dirs["a"])
    host.register("a", dirs["b"])  # re-uploaded elsewhere
    assert host.get("a")[1] == dirs["b"]
    read.broken.add(dirs["c"])
    with pytest.raises(InvalidRequestError):
        host.register("a", dirs["c"])
    assert host.get("a")[1] == dirs["b"]


def test_unregister_forgets_the_copy_and_the_path(dirs):
    host = HostAdapters(Reader(), capacity=4)
    host.register("a", dirs["a"])
    host.unregister("a")
    with pytest.raises(ModelNotFoundError):
        host.get("a")
    with pytest.raises(ModelNotFoundError):
        host.unregister("a")


def test_a_slow_read_holds_up_no_other_lookup(dirs):
    started, release = threading.Event(), threading.Event()

    def read(adapter_id: str, path: str) -> str:
        if adapter_id == "slow":
            started.set()
            assert release.wait(timeout=60)
        return adapter_id

    host = HostAdapters(read, capacity=4, resolver=dirs.get)
    host.register("a", dirs["a"])
    dirs["slow"] = dirs["d"]
    slow = threading.Thread(target=host.get, args=("slow",))
    slow.start()
    assert started.wait(timeout=60)
    assert host.get("a") == "a"  # answered while "slow" is still being read
    release.set()
    slow.join(timeout=60)
    assert "slow" in host


def test_host_adapters_and_messages_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, ownllm.engine.host_adapters, ownllm.engine.messages;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
