"""The registry: immutable content-hashed copies, tenant visibility, nothing half-registered."""

from __future__ import annotations

import shutil
import stat

import pytest
from sqlalchemy import func, select

from ownllm.adapters import registry
from ownllm.errors import ConflictError, InsufficientQuotaError, InvalidRequestError, NotFoundError
from ownllm.formats.peft import ADAPTER_FILES, AdapterFormatError
from ownllm.gateway.principal import Principal
from ownllm.models.tiny import make_tiny_model
from ownllm.store.quota import StorageQuota
from ownllm.store.schema import Adapter
from tests.adapters.conftest import files_under, write_lora

ALICE = Principal(tenant_id="alice")
BOB = Principal(tenant_id="bob")
ADMIN = Principal(tenant_id="default", is_admin=True)


def register(db, data_dir, src, name, tenant="alice", **kwargs):
    return registry.register_adapter(
        db,
        data_dir,
        src,
        name=name,
        tenant_id=tenant,
        base_model="tiny",
        base_sha256="b" * 64,
        source="imported",
        **kwargs,
    )


def num_rows(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Adapter))


def test_register_copies_hashes_and_resolves(db, data_dir, adapter_a, tiny_model_dir):
    record = register(
        db,
        data_dir,
        adapter_a,
        "ft:tiny:alice:tone",
        base_dir=tiny_model_dir,
        parents=["adapter-x"],
        datasets=[{"file_id": "file-1", "sha256": "c" * 64}],
    )
    stored = data_dir.resolve(record.path)
    assert sorted(p.name for p in stored.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (stored / "adapter_model.safetensors").read_bytes() == (
        adapter_a / "adapter_model.safetensors"
    ).read_bytes()
    assert not (stored / "adapter_model.safetensors").stat().st_mode & stat.S_IWUSR
    assert record.sha256 == registry.content_sha256(stored)
    assert record.rank == 4 and record.parents == ("adapter-x",)
    assert record.datasets[0]["file_id"] == "file-1"
    assert registry.resolve_model(db, ALICE, "ft:tiny:alice:tone") == record
    assert registry.resolve_model(db, ALICE, record.id) == record
    assert registry.adapter_path(db, data_dir, record.id) == stored
    assert registry.make_resolver(db, data_dir)(record.id) == str(stored)
    assert registry.make_resolver(db, data_dir)("adapter-nope") is None


def test_tenants_see_only_their_own_and_public(db, data_dir, adapter_a, adapter_b):
    mine = register(db, data_dir, adapter_a, "alice-a")
    shared = register(db, data_dir, adapter_b, "shared-b", tenant="carol", is_public=True)
    assert registry.resolve_model(db, BOB, "alice-a") is None
    assert registry.resolve_model(db, BOB, mine.id) is None
    assert registry.resolve_model(db, BOB, "shared-b") == shared
    assert [r.name for r in registry.list_adapters(db, BOB)] == ["shared-b"]
    assert [r.name for r in registry.list_adapters(db, ALICE)] == ["alice-a", "shared-b"]
    with pytest.raises(NotFoundError):
        registry.get_adapter(db, BOB, "alice-a")
    # a public adapter of another tenant can be used but not deleted
    with pytest.raises(NotFoundError):
        registry.delete_adapter(db, data_dir, ALICE, "shared-b")
    with pytest.raises(NotFoundError):
        registry.delete_adapter(db, data_dir, BOB, "alice-a")
    assert num_rows(db) == 2


def test_delete_removes_row_and_files(db, data_dir, adapter_a):
    record = register(db, data_dir, adapter_a, "gone")
    registry.delete_adapter(db, data_dir, ALICE, "gone")
    assert registry.resolve_model(db, ALICE, "gone") is None
    assert registry.adapter_path(db, data_dir, record.id) is None
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []


def test_failures_leave_nothing_behind(db, data_dir, adapter_a, tmp_path):
    register(db, data_dir, adapter_a, "taken")
    before = files_under(data_dir.adapters)
    with pytest.raises(ConflictError) as e:
        register(db, data_dir, adapter_a, "taken")
    assert e.value.param == "name"
    wider = make_tiny_model(tmp_path / "wider", hidden_size=96)
    with pytest.raises(AdapterFormatError, match="k_proj"):
        register(db, data_dir, adapter_a, "wrong-base", base_dir=wider)
    broken = tmp_path / "broken"
    shutil.copytree(adapter_a, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(AdapterFormatError, match="corrupted"):
        register(db, data_dir, broken, "corrupted")
    with pytest.raises(Exception, match="invalid adapter name"):
        register(db, data_dir, adapter_a, "has space")
    assert num_rows(db) == 1
    assert files_under(data_dir.adapters) == before
    assert files_under(data_dir.tmp) == []


def test_database_failure_removes_the_copied_files(db, data_dir, adapter_a, monkeypatch):
    def broken_session():
        raise RuntimeError("database went away")

    monkeypatch.setattr(db, "session", broken_session)
    monkeypatch.setattr(registry, "_name_taken", lambda *_: False)
    with pytest.raises(RuntimeError, match="went away"):
        register(db, data_dir, adapter_a, "doomed")
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []


def test_sweep_removes_only_old_orphans(db, data_dir, adapter_a):
    import os
    import time

    kept = register(db, data_dir, adapter_a, "kept")
    old, fresh = data_dir.adapters / "adapter-old", data_dir.adapters / "adapter-fresh"
    for directory in (old, fresh):
        shutil.copytree(adapter_a, directory)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert registry.sweep_orphans(db, data_dir) == ["adapter-old"]
    assert {p.name for p in data_dir.adapters.iterdir()} == {"adapter-fresh", kept.id}


def test_a_name_cannot_take_the_id_form(db, data_dir, adapter_a):
    bobs = register(db, data_dir, adapter_a, "tone", tenant="bob")
    for squat in (bobs.id, "adapter-0123abcd", "ADAPTER-FF"):
        with pytest.raises(InvalidRequestError, match="form of adapter ids") as e:
            register(db, data_dir, adapter_a, squat)
        assert e.value.param == "name"
    assert registry.resolve_model(db, BOB, bobs.id) == bobs
    assert registry.resolve_model(db, ADMIN, bobs.id) == bobs
    assert num_rows(db) == 1


def test_names_are_per_tenant_and_resolve_to_the_callers_own(db, data_dir, adapter_a, adapter_b):
    alices = register(db, data_dir, adapter_a, "tone")
    bobs = register(db, data_dir, adapter_b, "tone", tenant="bob")
    with pytest.raises(ConflictError, match="you already have"):
        register(db, data_dir, adapter_a, "tone", tenant="bob")
    assert registry.resolve_model(db, ALICE, "tone") == alices
    assert registry.resolve_model(db, BOB, "tone") == bobs
    assert registry.resolve_model(db, ALICE, bobs.id) is None
    # a public adapter of that name does not shadow a tenant's own, and serves the rest
    shared = register(db, data_dir, adapter_a, "tone", tenant="default", is_public=True)
    carol = Principal(tenant_id="carol")
    assert registry.resolve_model(db, BOB, "tone") == bobs
    assert registry.resolve_model(db, carol, "tone") == shared
    # the admin: its own tenant's name, else one name of one tenant; else ids only
    assert registry.resolve_model(db, ADMIN, "tone") == shared
    registry.delete_adapter(db, data_dir, ADMIN, shared.id)
    with pytest.raises(InvalidRequestError, match="alice, bob: name the adapter by its id"):
        registry.get_adapter(db, ADMIN, "tone")
    assert registry.resolve_model(db, ADMIN, alices.id) == alices
    # what /v1/models lists resolves back to the adapter listed
    listed = registry.list_adapters(db, ADMIN)
    assert registry.model_names(listed, ADMIN) == {alices.id: alices.id, bobs.id: bobs.id}
    assert registry.model_names(registry.list_adapters(db, BOB), BOB) == {bobs.id: "tone"}
    registry.delete_adapter(db, data_dir, BOB, "tone")
    assert registry.resolve_model(db, ALICE, "tone") == alices
    assert registry.get_adapter(db, ADMIN, "tone") == alices


def test_rank_past_the_engine_limit_is_refused_before_any_copy(db, data_dir, tmp_path):
    big = write_lora(tmp_path / "big", 20000)
    with pytest.raises(AdapterFormatError, match="rank is 20000") as e:
        register(db, data_dir, big, "big", max_rank=64)
    assert "limit of 64" in e.value.message
    nan = write_lora(tmp_path / "nan", 4, fill=float("nan"))
    with pytest.raises(AdapterFormatError, match="not finite"):
        register(db, data_dir, nan, "nan", max_rank=64)
    assert num_rows(db) == 0
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []


def test_storage_quota_refuses_with_the_figures(db, data_dir, adapter_a):
    size = sum((adapter_a / f).stat().st_size for f in ADAPTER_FILES)
    quota = StorageQuota("alice", 2 * size)
    register(db, data_dir, adapter_a, "one", quota=quota)
    register(db, data_dir, adapter_a, "two", quota=quota)  # exactly at the limit
    before = files_under(data_dir.adapters)
    with pytest.raises(InsufficientQuotaError) as e:
        register(db, data_dir, adapter_a, "three", quota=quota)
    assert e.value.status_code == 429 and e.value.code == "insufficient_quota"
    for figure in (2 * size, size):  # used, requested, limit
        assert f"{figure:,} bytes" in e.value.message
    assert "MiB" in e.value.message and "store.tenant_quota_bytes" in e.value.message
    register(db, data_dir, adapter_a, "bobs", tenant="bob", quota=StorageQuota("bob", size))
    assert num_rows(db) == 3 and len(before) + 2 == len(files_under(data_dir.adapters))
    assert files_under(data_dir.tmp) == []


def test_quota_is_checked_again_with_the_row(db, data_dir, adapter_a, monkeypatch):
    """A write that passed the first check but lost a race is undone by the second."""
    size = sum((adapter_a / f).stat().st_size for f in ADAPTER_FILES)
    quota = StorageQuota("alice", size)
    checks = []
    real = StorageQuota.check

    def racing(self, session, requested, *, stored=False):
        checks.append(stored)
        if not stored:
            return None  # as if the tenant's other upload had not landed yet
        return real(self, session, requested, stored=stored)

    register(db, data_dir, adapter_a, "first", quota=quota)
    monkeypatch.setattr(StorageQuota, "check", racing)
    with pytest.raises(InsufficientQuotaError):
        register(db, data_dir, adapter_a, "second", quota=quota)
    assert checks == [False, True] and num_rows(db) == 1
    assert len(list(data_dir.adapters.iterdir())) == 1 and files_under(data_dir.tmp) == []
