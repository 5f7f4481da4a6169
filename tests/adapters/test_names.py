"""Model names resolved in memory: a write of this process takes effect on the next lookup
(delete, promote, rollback, a new adapter), another process's within the time to live, and
one tenant's answer is never another's."""

from __future__ import annotations

from sqlalchemy import update

from ownllm.adapters import aliases
from ownllm.adapters.aliases import Gate
from ownllm.adapters.names import ModelNames
from ownllm.adapters.registry import delete_adapter, get_adapter
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import Adapter
from tests.adapters.test_aliases import ACME, GLOBEX, add_adapter, passes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delete_and_new_adapters_take_effect_at_once(two_tenants, tmp_path):
    db = two_tenants.db
    names = ModelNames(db, clock=Clock())  # time stands still: only the writes count
    assert names.adapter(ACME, "support-v1") is None
    adapter_id = add_adapter(db, "acme", "support-v1")
    assert names.adapter(ACME, "support-v1").id == adapter_id  # the unknown name was not kept
    assert names.adapter(ACME, adapter_id).id == adapter_id
    delete_adapter(db, DataDir(tmp_path / "home").ensure(), ACME, adapter_id)
    assert names.adapter(ACME, "support-v1") is None
    assert names.adapter(ACME, adapter_id) is None


def test_promote_and_rollback_take_effect_at_once(two_tenants):
    db = two_tenants.db
    names = ModelNames(db, clock=Clock())
    v1, v2 = add_adapter(db, "acme", "support-v1"), add_adapter(db, "acme", "support-v2")
    aliases.create_alias(db, ACME, "support", get_adapter(db, ACME, v1), Gate(), "key-acme")
    assert names.alias("acme", "support").target == v1
    aliases.promote(db, ACME, "support", get_adapter(db, ACME, v2), "key-acme", passes)
    assert names.alias("acme", "support").target == v2
    aliases.rollback(db, ACME, "support", "cli")
    assert names.alias("acme", "support").target == v1
    aliases.delete_alias(db, ACME, "support")
    assert names.alias("acme", "support") is None


def test_one_tenants_answer_is_not_anothers(two_tenants):
    db = two_tenants.db
    names = ModelNames(db, clock=Clock())
    private = add_adapter(db, "acme", "tone")
    assert names.adapter(ACME, "tone").id == private
    assert names.adapter(GLOBEX, "tone") is None
    assert names.adapter(GLOBEX, private) is None
    assert names.alias("globex", "tone") is None
    with db.session() as s:  # made public: globex sees it on its next request
        s.execute(update(Adapter).where(Adapter.id == private).values(is_public=True))
    assert names.adapter(GLOBEX, private).id == private


def test_another_processes_write_is_seen_within_the_time_to_live(two_tenants, db_url):
    db, clock = two_tenants.db, Clock()
    names = ModelNames(db, ttl_s=1.0, clock=clock)
    adapter_id = add_adapter(db, "acme", "support-v1")
    assert names.adapter(ACME, "support-v1").id == adapter_id
    other = Database.open(db_url, migrate=False)  # a worker or another gateway replica
    try:
        with other.session() as s:
            s.execute(update(Adapter).where(Adapter.id == adapter_id).values(name="renamed"))
    finally:
        other.close()
    clock.now = 0.5
    assert names.adapter(ACME, "support-v1").id == adapter_id  # not yet: remembered
    clock.now = 1.0
    assert names.adapter(ACME, "support-v1") is None
    assert names.adapter(ACME, "renamed").id == adapter_id
