"""Import → serve → same output as PEFT; request-time stacking equals the cat composition."""

from __future__ import annotations

import tarfile
import zipfile

import pytest
import torch

from ownllm.adapters import registry
from ownllm.adapters.operations import BaseModel, compose_adapters, import_adapter
from ownllm.errors import InvalidRequestError
from ownllm.gateway.principal import Principal
from tests.adapters.conftest import engine_greedy, files_under, hf_greedy
from tests.tiny import make_tiny_model

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

    record = import_adapter(sqlite_db, data_dir, ALICE, adapter_b, name="imported", base=base)
    assert record.source == "imported" and record.hyperparameters["r"] == 8
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    expected = hf_greedy(PeftModel.from_pretrained(model, adapter_b).eval())
    resolver = registry.make_resolver(sqlite_db, data_dir)
    assert engine_greedy(base.path, resolver, ((record.id, 1.0),)) == expected
    assert engine_greedy(base.path, resolver) != expected  # the adapter changes the output


def test_request_time_stacking_equals_the_cat_composition(
    sqlite_db, data_dir, base, adapter_a, adapter_b
):
    a = import_adapter(sqlite_db, data_dir, ALICE, adapter_a, name="a", base=base)
    b = import_adapter(sqlite_db, data_dir, ALICE, adapter_b, name="b", base=base)
    cat = compose_adapters(
        sqlite_db, data_dir, ALICE, name="a+b", adapters=[("a", 0.7), ("b", 0.5)], method="cat"
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
    record = import_adapter(db, data_dir, ALICE, archive, name="archived", base=base)
    assert record.sha256 == registry.content_sha256(data_dir.resolve(record.path))
    assert files_under(data_dir.tmp) == []


def test_unsafe_or_wrong_imports_leave_nothing(db, data_dir, base, adapter_a, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        tf.add(adapter_a / "adapter_config.json", arcname="../../escape.json")
    with pytest.raises(InvalidRequestError, match="outside the archive"):
        import_adapter(db, data_dir, ALICE, evil, name="evil", base=base)
    other = make_tiny_model(tmp_path / "other", intermediate_size=96, hidden_size=96)
    wrong = BaseModel(id="other", path=other, sha256="c" * 64)
    with pytest.raises(InvalidRequestError, match=r"model\.layers\.0\.self_attn\.k_proj"):
        import_adapter(db, data_dir, ALICE, adapter_a, name="wrong", base=wrong)
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(InvalidRequestError, match="neither an adapter directory"):
        import_adapter(db, data_dir, ALICE, not_archive, name="txt", base=base)
    assert registry.list_adapters(db, ALICE) == []
    assert files_under(data_dir.adapters) == [] and files_under(data_dir.tmp) == []
    assert not (tmp_path.parent / "escape.json").exists()
