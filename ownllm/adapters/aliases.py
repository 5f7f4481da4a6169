"""Model aliases: a tenant's stable model id (`support`) that points at one version.

A version is an adapter (trained, imported or composed: a composition is an adapter of its
own) or the base model (`target` None). Clients call the alias; promotion moves it to a
new version only when the alias's gate passes (`Gate`: eval thresholds and a maximum
red-team attack success rate, checked by the caller's `check`, `ownllm.evals.gate`), and
`rollback` returns it to the version before. Every move, and every refused promotion, is
an `alias_moves` row: who, when, from, to and the gate's figures.

A move is one transaction: the alias row changes with a conditional UPDATE on its
`version`, so two replicas promoting at once cannot interleave (the loser gets a 409 and
retries against what won), and a request resolves the alias once, when its call is built,
so a request in flight finishes on the version it started with.

Names: an alias name is a model id of its tenant, so it may not be the name of one of the
tenant's adapters (either way round) nor the id form of adapters. Another tenant's alias
does not exist for a caller (404). An adapter an alias points at cannot be deleted
(`ownllm.adapters.registry.delete_adapter` answers 409).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from ownllm.adapters.registry import (
    AdapterRecord,
    Viewer,
    find_adapter_id,
    get_adapter,
    is_adapter_id,
    own_adapter,
    validate_name,
)
from ownllm.adapters.routing import Router
from ownllm.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    reject_unknown_fields,
)
from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import Adapter, AliasMove, ModelAlias

BASE_TARGETS = ("base",)  # what a caller sends for the base model, besides its id


class GateRefusedError(ConflictError):
    """A promotion the alias's gate refused (409): the message says which figure failed."""

    code = "gate_refused"


@dataclass(frozen=True)
class EvalThreshold:
    eval: str  # an eval's name or id, of the alias's tenant
    min_pass_rate: float
    criterion: str | None = None  # one testing criterion's name; None: all items pass

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eval": self.eval, "min_pass_rate": self.min_pass_rate}
        if self.criterion is not None:
            out["criterion"] = self.criterion
        return out


@dataclass(frozen=True)
class Gate:
    """What a version must show before the alias moves to it (empty: nothing)."""

    evals: tuple[EvalThreshold, ...] = ()
    max_redteam_success_rate: float | None = None

    @classmethod
    def from_dict(cls, raw: Any, param: str = "gate") -> Gate:
        """Parse a gate sent by a client; a 400 naming the field for anything wrong."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"{param} must be an object", param=param)
        reject_unknown_fields(raw, ("evals", "max_redteam_success_rate"), param)
        evals = []
        for i, item in enumerate(raw.get("evals") or ()):
            where = f"{param}.evals[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("eval"), str):
                raise InvalidRequestError(f"{where} needs an 'eval' (name or id)", param=where)
            rate = _rate(item.get("min_pass_rate"), f"{where}.min_pass_rate")
            criterion = item.get("criterion")
            if criterion is not None and not isinstance(criterion, str):
                raise InvalidRequestError(f"{where}.criterion must be a string", param=where)
            evals.append(EvalThreshold(item["eval"], rate, criterion))
        max_rate = raw.get("max_redteam_success_rate")
        if max_rate is not None:
            max_rate = _rate(max_rate, f"{param}.max_redteam_success_rate")
        return cls(tuple(evals), max_rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evals": [t.to_dict() for t in self.evals],
            "max_redteam_success_rate": self.max_redteam_success_rate,
        }

    @property
    def is_empty(self) -> bool:
        return not self.evals and self.max_redteam_success_rate is None


def _rate(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidRequestError(f"{param} must be a number from 0 to 1", param=param)
    return float(value)


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict on one candidate: each figure checked and why it failed."""

    is_passed: bool
    figures: tuple[dict[str, Any], ...] = ()
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.is_passed,
            "figures": list(self.figures),
            "reasons": list(self.reasons),
        }


PASSED_EMPTY = GateReport(True)


@dataclass(frozen=True)
class AliasRecord:
    id: str
    name: str
    tenant_id: str
    target: str | None  # adapter id; None: the base model
    version: int
    gate: Gate
    created_at: int
    updated_at: int
    history: tuple[str | None, ...] = field(default=())
    router: Router | None = None  # a router alias (`ownllm.adapters.routing`)

    @classmethod
    def from_row(cls, row: ModelAlias) -> AliasRecord:
        return cls(
            id=row.id,
            name=row.name,
            tenant_id=row.tenant_id,
            target=row.target,
            version=row.version,
            gate=Gate.from_dict(row.gate or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            history=tuple(row.history or ()),
            router=_router_of(row),
        )

    def to_dict(self, target_name: str) -> dict[str, Any]:
        """The wire object; `target_name` is what the target is called (adapter name or
        the base model id)."""
        return {
            "id": self.name,
            "object": "model.alias",
            "alias_id": self.id,
            "owned_by": self.tenant_id,
            "target": target_name,
            "adapter_id": self.target,
            "version": self.version,
            "previous_adapter_id": self.history[-1] if self.history else None,
            "can_rollback": bool(self.history),
            "gate": self.gate.to_dict(),
            "router": self.router.to_wire() if self.router is not None else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _move_dict(row: AliasMove) -> dict[str, Any]:
    return {
        "object": "model.alias.move",
        "version": row.version,
        "action": row.action,
        "from_adapter_id": row.from_target,
        "to_adapter_id": row.to_target,
        "actor": row.actor,
        "created_at": row.created_at,
        "gate": row.gate or {},
        "reason": row.reason,
    }


# -- reading ------------------------------------------------------------------------------------


_ROUTERS: dict[str, Router | None] = {}  # by alias id: a row's router never changes
_MAX_CACHED = 4096


def _router_of(row: ModelAlias) -> Router | None:
    """The row's router, parsed once per process: a router alias is never moved or
    changed (it is made again, under a new id), so its id names its router for good.
    `row.router` (deferred by `find_alias`) is read only on the first sight of the id."""
    try:
        return _ROUTERS[row.id]
    except KeyError:
        pass
    router = Router.from_dict(row.router) if row.router else None
    if len(_ROUTERS) >= _MAX_CACHED:
        _ROUTERS.clear()
    _ROUTERS[row.id] = router
    return router


def find_alias(db: Database, tenant_id: str, name: str) -> AliasRecord | None:
    """The tenant's alias `name`, or None (what model resolution asks, once per request:
    the router's index, which may be large, is not read again)."""
    with db.session() as s:
        row = s.scalars(_alias_query(tenant_id, name)).first()
        return AliasRecord.from_row(row) if row is not None else None


def find_model(db: Database, viewer: Viewer, name: str) -> tuple[AliasRecord | None, str | None]:
    """What model `name` means for the viewer (model resolution, once a request): the
    tenant's alias `name`, else the id of the adapter it names, else neither; read on one
    connection, the adapter in plain SQL. An id is one read: no alias takes the id form of
    adapters (`validate_name`)."""
    with db.read() as connection:
        if not is_adapter_id(name):
            with Session(connection) as s:
                row = s.scalars(_alias_query(viewer.tenant_id, name)).first()
                if row is not None:
                    return AliasRecord.from_row(row), None
        return None, find_adapter_id(connection, viewer, name)


def _alias_query(tenant_id: str, name: str):
    return (
        select(ModelAlias)
        .options(defer(ModelAlias.router))
        .where(ModelAlias.tenant_id == tenant_id, ModelAlias.name == name)
    )


def get_alias(db: Database, viewer: Viewer, name: str) -> AliasRecord:
    """The viewer's own alias `name`; NotFoundError (404) for any other."""
    record = find_alias(db, viewer.tenant_id, name)
    if record is None:
        raise NotFoundError(f"no model alias {name!r}", param="alias")
    return record


def list_aliases(db: Database, viewer: Viewer) -> list[AliasRecord]:
    query = (
        select(ModelAlias).where(ModelAlias.tenant_id == viewer.tenant_id).order_by(ModelAlias.name)
    )
    with db.session() as s:
        return [AliasRecord.from_row(row) for row in s.scalars(query)]


def list_moves(db: Database, viewer: Viewer, name: str) -> list[dict[str, Any]]:
    """The alias's moves and refused promotions, oldest first."""
    alias = get_alias(db, viewer, name)
    query = select(AliasMove).where(AliasMove.alias_id == alias.id).order_by(AliasMove.id)
    with db.session() as s:
        return [_move_dict(row) for row in s.scalars(query)]


def aliases_pointing_at(db: Database, adapter_id: str) -> list[str]:
    """Names (tenant/name) of the aliases whose current version is `adapter_id`."""
    query = select(ModelAlias.tenant_id, ModelAlias.name).where(ModelAlias.target == adapter_id)
    with db.session() as s:
        return [f"{tenant}/{name}" for tenant, name in s.execute(query)]


def name_is_alias(db: Database, tenant_id: str, name: str) -> bool:
    return find_alias(db, tenant_id, name) is not None


# -- writing ------------------------------------------------------------------------------------


def resolve_target(
    db: Database, viewer: Viewer, ref: str | None, base_model: str, param: str = "target"
) -> AdapterRecord | None:
    """The version `ref` names for the viewer: None for the base model (its id or
    `base`), else the adapter (its own or a public one; 404 otherwise). An alias cannot
    point at another alias (400)."""
    if ref is None or ref in BASE_TARGETS or ref == base_model:
        return None
    if find_alias(db, viewer.tenant_id, ref) is not None:
        raise InvalidRequestError(
            f"{ref!r} is an alias; point the alias at an adapter or the base model", param=param
        )
    record = get_adapter(db, viewer, ref, param=param)
    if record.base_model != base_model:
        raise InvalidRequestError(
            f"adapter {ref!r} was trained on {record.base_model!r}, not on {base_model!r}",
            param=param,
        )
    return record


def create_alias(
    db: Database,
    viewer: Viewer,
    name: str,
    target: AdapterRecord | None,
    gate: Gate,
    actor: str,
    router: Router | None = None,
) -> AliasRecord:
    """A new alias of the viewer's tenant at `target`, or routing over `router`'s versions
    (then `target` is None: the base model answers what no version is near); its first
    move is recorded."""
    validate_name(name)
    if own_adapter(db, viewer.tenant_id, name) is not None:
        raise ConflictError(
            f"you have an adapter named {name!r}; an alias needs a name of its own", param="name"
        )
    now = int(time.time())
    row = ModelAlias(
        id=new_id("alias"),
        tenant_id=viewer.tenant_id,
        name=name,
        target=target.id if target else None,
        history=[],
        gate=gate.to_dict(),
        version=1,
        created_at=now,
        updated_at=now,
        router=router.to_dict() if router is not None else None,
    )
    try:
        with db.session() as s:
            s.add(row)
            s.flush()
            s.add(_move(row, "create", None, row.target, actor, PASSED_EMPTY))
            record = AliasRecord.from_row(row)
    except IntegrityError:
        raise ConflictError(f"you already have an alias named {name!r}", param="name") from None
    return record


def set_gate(db: Database, viewer: Viewer, name: str, gate: Gate) -> AliasRecord:
    alias = get_alias(db, viewer, name)
    with db.session() as s:
        s.execute(
            update(ModelAlias)
            .where(ModelAlias.id == alias.id)
            .values(gate=gate.to_dict(), updated_at=int(time.time()))
        )
    return get_alias(db, viewer, name)


def delete_alias(db: Database, viewer: Viewer, name: str) -> AliasRecord:
    """Delete the alias and its history; its versions (adapters) stay."""
    alias = get_alias(db, viewer, name)
    with db.session() as s:
        for move in s.scalars(select(AliasMove).where(AliasMove.alias_id == alias.id)):
            s.delete(move)
        s.flush()
        row = s.get(ModelAlias, alias.id)
        if row is not None:
            s.delete(row)
    return alias


def _move(
    row: ModelAlias,
    action: str,
    from_target: str | None,
    to_target: str | None,
    actor: str,
    report: GateReport,
    reason: str | None = None,
) -> AliasMove:
    return AliasMove(
        alias_id=row.id,
        tenant_id=row.tenant_id,
        version=row.version,
        action=action,
        from_target=from_target,
        to_target=to_target,
        actor=actor,
        created_at=time.time(),
        gate=report.to_dict(),
        reason=reason,
    )


GateCheck = Callable[[AliasRecord, AdapterRecord | None], GateReport]


def promote(
    db: Database,
    viewer: Viewer,
    name: str,
    target: AdapterRecord | None,
    actor: str,
    check: GateCheck,
) -> AliasRecord:
    """Move the alias to `target` when `check` (the alias's gate on it) passes; a refusal
    is recorded (action `refused`, with the figures) and raised as GateRefusedError."""
    alias = get_alias(db, viewer, name)
    _not_a_router(alias)
    to_target = target.id if target else None
    if to_target == alias.target:
        raise ConflictError(f"alias {name!r} already points at that version", param="to")
    report = check(alias, target)
    if not report.is_passed:
        reason = "; ".join(report.reasons) or "the gate refused"
        with db.session() as s:
            row = s.get(ModelAlias, alias.id)
            s.add(_move(row, "refused", alias.target, to_target, actor, report, reason))
        raise GateRefusedError(f"alias {name!r} was not promoted: {reason}", param="to")
    history = [*alias.history, alias.target]
    return _apply(db, alias, to_target, history, "promote", actor, report)


def rollback(db: Database, viewer: Viewer, name: str, actor: str) -> AliasRecord:
    """Return the alias to the version before its current one (no gate: it served)."""
    alias = get_alias(db, viewer, name)
    _not_a_router(alias)
    if not alias.history:
        raise ConflictError(f"alias {name!r} has no earlier version to roll back to", param="alias")
    previous = alias.history[-1]
    if previous is not None:
        with db.session() as s:
            if s.get(Adapter, previous) is None:
                raise ConflictError(
                    f"alias {name!r} cannot roll back: its previous version {previous} was "
                    "deleted; promote it to another version",
                    param="alias",
                )
    return _apply(db, alias, previous, list(alias.history[:-1]), "rollback", actor, PASSED_EMPTY)


def _not_a_router(alias: AliasRecord) -> None:
    if alias.router is not None:
        raise ConflictError(
            f"alias {alias.name!r} routes over its versions; it is not promoted or rolled "
            "back (make it again to change them)",
            param="alias",
        )


def _apply(
    db: Database,
    alias: AliasRecord,
    to_target: str | None,
    history: list,
    action: str,
    actor: str,
    report: GateReport,
) -> AliasRecord:
    """One transaction: the target adapter locked (a delete waits), the alias moved only if
    no one moved it since it was read, the move recorded."""
    with db.session() as s:
        if to_target is not None:
            lock = select(Adapter.id).where(Adapter.id == to_target)
            if db.is_postgres:
                lock = lock.with_for_update()
            if s.scalar(lock) is None:
                raise NotFoundError(f"no adapter {to_target!r}", param="to")
        done = s.execute(
            update(ModelAlias)
            .where(ModelAlias.id == alias.id, ModelAlias.version == alias.version)
            .values(
                target=to_target,
                history=history,
                version=alias.version + 1,
                updated_at=int(time.time()),
            )
        ).rowcount
        if done != 1:
            raise ConflictError(
                f"alias {alias.name!r} was moved by someone else meanwhile; look at it again",
                param="alias",
            )
        row = s.get(ModelAlias, alias.id)
        s.refresh(row)
        s.add(_move(row, action, alias.target, to_target, actor, report))
        return AliasRecord.from_row(row)
