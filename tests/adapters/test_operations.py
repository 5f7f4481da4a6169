"""Import → serve → same output as PEFT; request-time stacking equals the cat composition."""

from __future__ import annotations

import tarfile
import zipfile

import pytest
import torch

from ownllm.adapters import archive as archive_module
from ownllm.adapters import registry
from ownllm.adapters.operations import BaseModel, compose_adapters, import_adapter
from ownllm.errors import InsufficientQuotaError, InvalidRequestError
from ownllm.gateway.principal import Principal
from ownllm.models.tiny import make_tiny_model
from ownllm.store.quota import StorageQuota
from tests.adapters.conftest import engine_greedy, files_under, hf_greedy, write_lora, zip_dir

ALICE = Principal(tenant_id="alice")


@pytest.fixture
def base(tiny_model_dir) -> BaseModel:
    return BaseModel(id="tiny", path=tiny_model_dir, sha256="b" * 64)


@pytest.fixture
def sqlite_db(tmp_path):
    from ownllm.store.db import Database

    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    yield db
    db.close()


def test_imported_peft_adapter_serves_like_peft(sqlite_db, data_dir, base, adapter_b):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    record = import_adapter(
        sqlite_db, data_dir, ALICE, adapter_b, name="imported", base=base, max_rank=64
    )
    assert record.source == "imported" and record.hyperparameters["r"] == 8
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    expected = hf_greedy(PeftModel.from_pretrained(model, adapter_b).eval())
    resolver = registry.make_resolver(sqlite_db, data_dir)
    assert engine_greedy(base.path, resolver, ((record.id, 1.0),)) == expected
    assert engine_greedy(base.path, resolver) != expected  # the adapter changes the output


def test_request_time_stacking_equals_the_cat_composition(
    sqlite_db, data_dir, base, adapter_a, adapter_b
):
    a = import_adapter(sqlite_db, data_dir, ALICE, adapter_a, name="a", base=base, max_rank=64)
    b = import_adapter(sqlite_db, data_dir, ALICE, adapter_b, name="b", base=base, max_rank=64)
    cat = compose_adapters(
        sqlite_db,
        data_dir,
        ALICE,
        name="a+b",
        adapters=[("a", 0.7), ("b", 0.5)],
        method="cat",
        max_rank=64,
    )
    resolver = registry.make_resolver(sqlite_db, data_dir)
    stacked = engine_greedy(base.path, resolver, ((a.id, 0.7), (b.id, 0.5)))
    assert stacked == engine_greedy(base.path, resolver, ((cat.id, 1.0),))
    assert stacked != engine_greedy(base.path, resolver, ((a.id, 1.0),))


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_imports_archives_with_a_nested_directory(db, data_dir, base, adapter_a, tmp_path, kind):
    archive = tmp_path / f"adapter.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for file in adapter_a.iterdir():
                zf.write(file, f"my-adapter/{file.name}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(adapter_a, arcname="my-adapter")
    record = import_adapter(db, data_dir, ALICE, archive, name="archived", base=base, max_rank=64)
    assert record.sha256 == registry.content_sha256(data_dir.resolve(record.path))
    assert files_under(data_dir.tmp) == []


def test_unsafe_or_wrong_imports_leave_nothing(db, data_dir, base, adapter_a, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        tf.add(adapter_a / "adapter_config.json", arcname="../../escape.json")
    with pytest.raises(InvalidRequestError, match="outside the archive"):
        import_adapter(db, data_dir, ALICE, evil, name="evil", base=base, max_rank=64)
    other = make_tiny_model(tmp_path / "other", intermediate_size=96, hidden_size=96)
    wrong = BaseModel(id="other", path=other, sha256="c" * 64)
    with pytest.raises(InvalidRequestError, match=r"model\.layers\.0\.self_attn\.k_proj"):
        import_adapter(db, data_dir, ALICE, adapter_a, name="wrong", base=wrong, max_rank=64)
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(InvalidRequestError, match="neither an adapter directory"):
        import_adapter(db, data_dir, ALICE, not_archive, name="txt", base=base, max_rank=64)
    assert registry.list_adapters(db, ALICE) == []
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []
    assert not (tmp_path.parent / "escape.json").exists()


def test_an_amplifying_archive_is_refused_before_it_is_unpacked(
    db, data_dir, base, tmp_path, monkeypatch
):
    """A zip of a few KB declaring a rank-20000 adapter of 10 MB: refused from its header."""
    big = zip_dir(write_lora(tmp_path / "big", 20000), tmp_path / "big.zip")
    wide = zip_dir(write_lora(tmp_path / "wide", 4, in_features=96), tmp_path / "wide.zip")
    fits = zip_dir(write_lora(tmp_path / "fits", 4, fill=0.01), tmp_path / "fits.zip")
    assert big.stat().st_size < 100_000

    def no_extraction(*_):
        raise AssertionError("a member was extracted")

    monkeypatch.setattr(archive_module, "_copy", no_extraction)
    with pytest.raises(InvalidRequestError, match=r"rank is 20000 .*, above .*limit of 64"):
        import_adapter(db, data_dir, ALICE, big, name="big", base=base, max_rank=64)
    with pytest.raises(InvalidRequestError, match=r"lora_A \(4, 96\)") as e:
        import_adapter(db, data_dir, ALICE, wide, name="wide", base=base, max_rank=64)
    assert e.value.param == "base_model"
    with pytest.raises(InsufficientQuotaError, match="limit 1,000 bytes"):
        import_adapter(
            db,
            data_dir,
            ALICE,
            fits,
            name="fits",
            base=base,
            max_rank=64,
            quota=StorageQuota("alice", 1000),
        )
    assert registry.list_adapters(db, ALICE) == []
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []
    monkeypatch.undo()
    record = import_adapter(db, data_dir, ALICE, fits, name="fits", base=base, max_rank=64)
    assert record.rank == 4 and files_under(data_dir.tmp) == []


def test_a_cat_past_the_rank_limit_is_refused(db, data_dir, base, adapter_a, adapter_b):
    for name, src in (("a", adapter_a), ("b", adapter_b)):
        import_adapter(db, data_dir, ALICE, src, name=name, base=base, max_rank=8)
    with pytest.raises(InvalidRequestError, match="rank is 12 .*, above .*limit of 8"):
        compose_adapters(
            db,
            data_dir,
            ALICE,
            name="a+b",
            adapters=[("a", 1), ("b", 1)],
            method="cat",
            max_rank=8,
        )
    assert [r.name for r in registry.list_adapters(db, ALICE)] == ["a", "b"]
