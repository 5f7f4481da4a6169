"""Model aliases in the registry: gates parsed, promotion through the gate, refusals and
moves recorded, rollback, one move wins a race, adapters an alias points at stay, names."""

from __future__ import annotations

import time

import pytest

from ownllm.adapters import aliases
from ownllm.adapters.aliases import Gate, GateRefusedError, GateReport
from ownllm.adapters.registry import delete_adapter, get_adapter
from ownllm.errors import ConflictError, InvalidRequestError, NotFoundError
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id
from ownllm.store.blobs import DataDir
from ownllm.store.schema import Adapter

BASE = "tiny"
ACME = Principal(tenant_id="acme", key_id="key-acme")
GLOBEX = Principal(tenant_id="globex", key_id="key-globex")


def add_adapter(db, tenant: str, name: str, base_model: str = BASE) -> str:
    """A registry row (no files: aliases and resolution only read the row)."""
    adapter_id = new_id("adapter")
    with db.session() as s:
        s.add(
            Adapter(
                id=adapter_id,
                name=name,
                tenant_id=tenant,
                base_model=base_model,
                base_sha256="b" * 64,
                parents=[],
                source="trained",
                datasets=[],
                hyperparameters={},
                metrics={},
                rank=4,
                target_modules=["q_proj"],
                size_bytes=1,
                sha256="c" * 64,
                path=f"adapters/{adapter_id}",
                is_public=False,
                created_at=int(time.time()),
            )  # fmt: skip
        )
    return adapter_id


def passes(alias, target) -> GateReport:
    return GateReport(True, ({"figure": 1.0},))


def refuses(alias, target) -> GateReport:
    return GateReport(False, ({"pass_rate": 0.5},), ("pass rate 0.500 is below 0.800",))


@pytest.fixture
def db(two_tenants):
    return two_tenants.db


def test_gate_parses_and_names_what_is_wrong():
    gate = Gate.from_dict(
        {
            "evals": [{"eval": "support-holdout", "min_pass_rate": 0.8}],
            "max_redteam_success_rate": 0.1,
        }
    )
    assert gate.evals[0].eval == "support-holdout" and gate.evals[0].min_pass_rate == 0.8
    assert Gate.from_dict(gate.to_dict()) == gate
    with pytest.raises(InvalidRequestError) as e:
        Gate.from_dict({"evals": [{"eval": "x", "min_pass_rate": 1.5}]})
    assert e.value.param == "gate.evals[0].min_pass_rate"
    with pytest.raises(InvalidRequestError) as e:
        Gate.from_dict({"max_redteam": 0.1})
    assert "max_redteam" in str(e.value)


def test_promote_refuse_rollback_and_every_move_recorded(db):
    v1, v2 = add_adapter(db, "acme", "support-v1"), add_adapter(db, "acme", "support-v2")
    first = get_adapter(db, ACME, "support-v1")
    alias = aliases.create_alias(db, ACME, "support", first, Gate(), "key-acme")
    assert (alias.target, alias.version) == (v1, 1)

    second = get_adapter(db, ACME, v2)
    with pytest.raises(GateRefusedError) as e:
        aliases.promote(db, ACME, "support", second, "key-acme", refuses)
    assert e.value.status_code == 409 and "below 0.800" in str(e.value)
    assert aliases.get_alias(db, ACME, "support").target == v1  # not moved

    moved = aliases.promote(db, ACME, "support", second, "key-acme", passes)
    assert (moved.target, moved.version, moved.history) == (v2, 2, (v1,))
    back = aliases.rollback(db, ACME, "support", "cli")
    assert (back.target, back.version, back.history) == (v1, 3, ())
    with pytest.raises(ConflictError, match="no earlier version"):
        aliases.rollback(db, ACME, "support", "cli")

    moves = aliases.list_moves(db, ACME, "support")
    assert [m["action"] for m in moves] == ["create", "refused", "promote", "rollback"]
    refused = moves[1]
    assert refused["to_adapter_id"] == v2 and refused["actor"] == "key-acme"
    assert refused["gate"]["figures"] == [{"pass_rate": 0.5}] and "0.500" in refused["reason"]
    assert moves[2]["gate"] == {"passed": True, "figures": [{"figure": 1.0}], "reasons": []}
    assert moves[3]["from_adapter_id"] == v2 and moves[3]["actor"] == "cli"


def test_an_alias_of_the_base_model_promotes_to_an_adapter(db):
    v1 = add_adapter(db, "acme", "support-v1")
    aliases.create_alias(db, ACME, "support", None, Gate(), "cli")
    assert aliases.resolve_target(db, ACME, "base", BASE) is None
    assert aliases.resolve_target(db, ACME, BASE, BASE) is None
    moved = aliases.promote(db, ACME, "support", get_adapter(db, ACME, v1), "cli", passes)
    assert moved.target == v1 and moved.history == (None,)
    assert aliases.rollback(db, ACME, "support", "cli").target is None


def test_of_two_racing_moves_only_one_lands(db):
    v1, v2 = add_adapter(db, "acme", "a1"), add_adapter(db, "acme", "a2")
    alias = aliases.create_alias(db, ACME, "support", None, Gate(), "cli")
    aliases._apply(db, alias, v1, [None], "promote", "replica-1", GateReport(True))
    with pytest.raises(ConflictError, match="moved by someone else"):
        aliases._apply(db, alias, v2, [None], "promote", "replica-2", GateReport(True))
    assert aliases.get_alias(db, ACME, "support").target == v1


def test_an_adapter_an_alias_points_at_cannot_be_deleted(db, tmp_path):
    v1, v2 = add_adapter(db, "acme", "a1"), add_adapter(db, "acme", "a2")
    aliases.create_alias(db, ACME, "support", get_adapter(db, ACME, v1), Gate(), "cli")
    data_dir = DataDir(tmp_path).ensure()
    with pytest.raises(ConflictError) as e:
        delete_adapter(db, data_dir, ACME, "a1")
    assert e.value.status_code == 409 and "model alias support points at it" in str(e.value)
    aliases.promote(db, ACME, "support", get_adapter(db, ACME, v2), "cli", passes)
    delete_adapter(db, data_dir, ACME, "a1")  # no longer the alias's version
    with pytest.raises(ConflictError, match="was deleted"):
        aliases.rollback(db, ACME, "support", "cli")


def test_names_and_tenants(db):
    add_adapter(db, "acme", "taken")
    with pytest.raises(ConflictError, match="adapter named 'taken'"):
        aliases.create_alias(db, ACME, "taken", None, Gate(), "cli")
    aliases.create_alias(db, ACME, "support", None, Gate(), "cli")
    with pytest.raises(ConflictError, match="already have an alias"):
        aliases.create_alias(db, ACME, "support", None, Gate(), "cli")
    with pytest.raises(InvalidRequestError, match="is an alias"):
        aliases.resolve_target(db, ACME, "support", BASE)
    # another tenant: the alias does not exist, and the name is free there
    with pytest.raises(NotFoundError):
        aliases.get_alias(db, GLOBEX, "support")
    with pytest.raises(NotFoundError):
        aliases.rollback(db, GLOBEX, "support", "cli")
    assert aliases.list_aliases(db, GLOBEX) == []
    aliases.create_alias(db, GLOBEX, "support", None, Gate(), "cli")
    # an adapter of another tenant is not a version this tenant may point at
    other = add_adapter(db, "globex", "theirs")
    with pytest.raises(NotFoundError):
        aliases.resolve_target(db, ACME, other, BASE)
    add_adapter(db, "acme", "other-base", base_model="not-tiny")
    with pytest.raises(InvalidRequestError, match="trained on 'not-tiny'"):
        aliases.resolve_target(db, ACME, "other-base", BASE)
