"""The unattended loop: new data → train → eval → red-team → promote, without a person.

A fine-tuning job created with `promote: {"alias": "support", "eval": "support-holdout"}`
(the official client sends it in `extra_body`) gets a `promotions` row, checked at once:
the alias and the eval must be the tenant's (a 400 naming `promote.alias` /
`promote.eval`), and the loop must know which items to run the eval on: `promote.
data_source` (an Evals API run data source; its `model` is replaced) or, by default, the
data source of the eval's latest run on a model (the run someone made on the base or the
current version), repeated on the new adapter.

`advance(db)` moves every loop one step, and the eval worker calls it each time it looks
for work, so it runs wherever `ownllm serve` runs, whichever process trained the adapter:
- a `waiting` loop whose job succeeded queues an eval run and a red-team run on the new
  adapter, both pinned to it, for the job's tenant and key (`evaluating`); a job that
  failed or was cancelled ends the loop (`skipped`);
- an `evaluating` loop whose two runs have ended asks the alias's gate
  (`ownllm.evals.gate`), which reads those runs, with one more condition: both runs must
  have completed. Passed: the alias moves to the adapter (`promoted`). Refused: the alias
  history records the refusal with the figures (`refused`), as a refused manual promotion
  does. Either way the job's events say so, and the job object shows the loop.

Each step is a conditional UPDATE on the loop's status, so replicas sharing the database
take each step once. Every move's actor is `job:<ftjob id>`.
Left out: a loop whose server dies between claiming `evaluating` and queueing its runs
stays there (its runs are never made); a person promotes by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from ownllm.adapters import aliases
from ownllm.adapters.registry import own_adapter
from ownllm.errors import ConflictError, InvalidRequestError, OwnLLMError, reject_unknown_fields
from ownllm.evals import store
from ownllm.evals.gate import check_gate, find_eval_row, version_label
from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import EvalRun, FineTuningJob, Promotion
from ownllm.tuning.jobs import FINAL, add_event

FIELDS = ("alias", "eval", "data_source")
RUN_ENDED = ("completed", "failed", "canceled")


@dataclass(frozen=True)
class Owner:
    """The job's tenant and key, as the eval store and the registry see a caller."""

    tenant_id: str
    key_id: str | None = None
    is_admin: bool = False

    def can_see(self, owner_tenant_id: str, is_public: bool = False) -> bool:
        return is_public or owner_tenant_id == self.tenant_id


@dataclass(frozen=True)
class Request:
    """A checked `promote` field: the alias's name, the eval's id, the run to repeat."""

    alias: str
    eval_id: str
    data_source: dict[str, Any]


def check_request(db: Database, viewer: Any, raw: Any) -> Request:
    """The job's `promote` field, checked against the tenant's aliases and evals; a 400
    naming the field for anything wrong."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("promote must be an object {'alias', 'eval'}", param="promote")
    reject_unknown_fields(raw, FIELDS, "promote")
    for name in ("alias", "eval"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise InvalidRequestError(
                f"promote.{name} is required (the name of one of your "
                f"{'model aliases' if name == 'alias' else 'evals'})",
                param=f"promote.{name}",
            )
    if aliases.find_alias(db, viewer.tenant_id, raw["alias"]) is None:
        raise InvalidRequestError(
            f"you have no model alias {raw['alias']!r} (create it with POST /v1/aliases)",
            param="promote.alias",
        )
    with db.session() as s:
        definition = find_eval_row(s, viewer.tenant_id, raw["eval"])
        if definition is None or definition.kind != "eval":
            raise InvalidRequestError(f"you have no eval {raw['eval']!r}", param="promote.eval")
        eval_id, item_schema = definition.id, definition.data_source_config["item_schema"]
        data_source = raw.get("data_source")
        if data_source is None:
            data_source = _last_data_source(s, viewer.tenant_id, eval_id)
            if data_source is None:
                raise InvalidRequestError(
                    f"eval {raw['eval']!r} has no run on a model to repeat on the new "
                    "adapter: run it once (on the base model or the alias), or give "
                    "promote.data_source",
                    param="promote.eval",
                )
    if not isinstance(data_source, dict):
        raise InvalidRequestError(
            "promote.data_source must be an object", param="promote.data_source"
        )
    data_source = {**data_source, "model": "(the new adapter)"}
    try:
        store.check_data_source(data_source, item_schema, db, viewer)
    except OwnLLMError as e:
        raise InvalidRequestError(
            f"promote.{e.param or 'data_source'}: {e.message}",
            param=f"promote.{e.param or 'data_source'}",
        ) from None
    if data_source["type"] != "completions":
        raise InvalidRequestError(
            "promote.data_source.type must be 'completions' (the new adapter is sampled)",
            param="promote.data_source.type",
        )
    return Request(raw["alias"], eval_id, data_source)


def _last_data_source(session, tenant_id: str, eval_id: str) -> dict[str, Any] | None:
    query = (
        select(EvalRun.data_source)
        .where(EvalRun.tenant_id == tenant_id, EvalRun.eval_id == eval_id)
        .order_by(EvalRun.created_at.desc(), EvalRun.id.desc())
    )
    for data_source in session.scalars(query):
        if (data_source or {}).get("type") == "completions":
            return data_source
    return None


def create(db: Database, job: FineTuningJob, request: Request) -> None:
    """The job's loop, waiting for its training (in the job's creation)."""
    now = int(time.time())
    with db.session() as s:
        s.add(
            Promotion(
                id=new_id("promo"),
                job_id=job.id,
                tenant_id=job.tenant_id,
                key_id=job.key_id,
                alias=request.alias,
                eval_id=request.eval_id,
                data_source=request.data_source,
                status="waiting",
                created_at=now,
                updated_at=now,
            )
        )


def promotion_object(row: Promotion) -> dict[str, Any]:
    """What the job object shows of its loop (an ownllm extension field, `promotion`)."""
    return {
        "alias": row.alias,
        "eval_id": row.eval_id,
        "status": row.status,
        "adapter_id": row.adapter_id,
        "eval_run_id": row.eval_run_id,
        "redteam_run_id": row.redteam_run_id,
        "gate": row.gate,
        "reason": row.reason,
        "updated_at": row.updated_at,
    }


def promotions_of(db: Database, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not job_ids:
        return {}
    with db.session() as s:
        rows = s.scalars(select(Promotion).where(Promotion.job_id.in_(job_ids)))
        return {row.job_id: promotion_object(row) for row in rows}


# -- the steps ----------------------------------------------------------------------------------


def advance(db: Database) -> bool:
    """Move every loop that can move one step; True when one did."""
    moved = False
    for promo_id, job_status in _waiting(db):
        moved |= _start(db, promo_id, job_status)
    for promo_id in _evaluated(db):
        moved |= _decide(db, promo_id)
    return moved


def _waiting(db: Database) -> list[tuple[str, str]]:
    query = (
        select(Promotion.id, FineTuningJob.status)
        .join(FineTuningJob, FineTuningJob.id == Promotion.job_id)
        .where(Promotion.status == "waiting", FineTuningJob.status.in_(FINAL))
    )
    with db.session() as s:
        return list(s.execute(query))


def _evaluated(db: Database) -> list[str]:
    """Loops whose eval and red-team runs have both ended."""
    ended = select(EvalRun.id).where(EvalRun.status.in_(RUN_ENDED))
    query = select(Promotion.id).where(
        Promotion.status == "evaluating",
        Promotion.eval_run_id.in_(ended),
        Promotion.redteam_run_id.in_(ended),
    )
    with db.session() as s:
        return list(s.scalars(query))


def _claim(db: Database, promo_id: str, old: str, new: str, **values: Any) -> bool:
    with db.session() as s:
        done = s.execute(
            update(Promotion)
            .where(Promotion.id == promo_id, Promotion.status == old)
            .values(status=new, updated_at=int(time.time()), **values)
        ).rowcount
    return done == 1


def _start(db: Database, promo_id: str, job_status: str) -> bool:
    with db.session() as s:
        promo = s.get(Promotion, promo_id)
        job = s.get(FineTuningJob, promo.job_id)
    if job_status != "succeeded":
        reason = f"the fine-tuning job {job_status}; nothing was evaluated"
        if _claim(db, promo_id, "waiting", "skipped", reason=reason):
            add_event(db, job.id, f"Alias {promo.alias!r} not promoted: {reason}.", level="warn")
        return True
    record = own_adapter(db, job.tenant_id, job.fine_tuned_model or "")
    if record is None:  # deleted between training and now
        reason = f"the adapter {job.fine_tuned_model} no longer exists"
        if _claim(db, promo_id, "waiting", "failed", reason=reason):
            add_event(db, job.id, f"Alias {promo.alias!r} not promoted: {reason}.", level="error")
        return True
    if not _claim(db, promo_id, "waiting", "evaluating", adapter_id=record.id):
        return False  # another replica started it
    from ownllm.redteam.suite import create_redteam_run

    owner = Owner(job.tenant_id, job.key_id)
    meta = {"fine_tuning_job": job.id, "promotion": promo.alias}
    try:
        evaluated = store.create_run(
            db,
            owner,
            promo.eval_id,
            data_source={**promo.data_source, "model": record.name},
            adapter_id=record.id,
            name=f"promote {promo.alias}: {record.name}",
            metadata=meta,
        )
        red = create_redteam_run(db, owner, record.name, job.base_model)
    except OwnLLMError as e:  # the eval or its file was deleted since the job was made
        reason = f"the runs could not be queued: {e.message}"
        _claim(db, promo_id, "evaluating", "failed", reason=reason)
        add_event(db, job.id, f"Alias {promo.alias!r} not promoted: {reason}.", level="error")
        return True
    with db.session() as s:
        s.execute(
            update(Promotion)
            .where(Promotion.id == promo_id)
            .values(eval_run_id=evaluated["id"], redteam_run_id=red["id"])
        )
    add_event(
        db,
        job.id,
        f"Evaluating {record.name} for alias {promo.alias!r}: eval run {evaluated['id']}, "
        f"red-team run {red['id']}.",
        data={"eval_run_id": evaluated["id"], "redteam_run_id": red["id"]},
    )
    return True


def _decide(db: Database, promo_id: str) -> bool:
    if not _claim(db, promo_id, "evaluating", "deciding"):
        return False
    with db.session() as s:
        promo = s.get(Promotion, promo_id)
        runs = {r.id: r for r in s.scalars(select(EvalRun).where(
            EvalRun.id.in_([promo.eval_run_id, promo.redteam_run_id])))}  # fmt: skip
    owner = Owner(promo.tenant_id, promo.key_id)
    unfinished = [
        f"{kind} run {run_id} {runs[run_id].status}"
        + (
            f": {runs[run_id].error['message']}"
            if (runs[run_id].error or {}).get("message")
            else ""
        )
        for kind, run_id in (("eval", promo.eval_run_id), ("red-team", promo.redteam_run_id))
        if run_id in runs and runs[run_id].status != "completed"
    ]
    gate = check_gate(db, promo.tenant_id)

    def check(alias, target):
        report = gate(alias, target)
        if not unfinished:
            return report
        return aliases.GateReport(False, report.figures, (*unfinished, *report.reasons))

    with db.session() as s:
        target = s.get(FineTuningJob, promo.job_id)
    record = own_adapter(db, promo.tenant_id, target.fine_tuned_model or "")
    status, reason, figures = "failed", None, None
    try:
        if record is None:
            raise ConflictError(f"the adapter {target.fine_tuned_model} no longer exists")
        moved = _promote(db, owner, promo, record, check)
        status, figures = "promoted", _last_move(db, owner, promo.alias)["gate"]
        message = (
            f"Alias {promo.alias!r} promoted to {version_label(record)} (version {moved.version})."
        )
        level = "info"
    except aliases.GateRefusedError:
        move = _last_move(db, owner, promo.alias)  # the refusal, with the figures
        status, reason, figures = "refused", move["reason"], move["gate"]
        message, level = f"Alias {promo.alias!r} not promoted: {reason}.", "warn"
    except OwnLLMError as e:  # the alias was deleted, or kept moving under us
        reason = e.message
        message, level = f"Alias {promo.alias!r} not promoted: {e.message}.", "error"
    _claim(db, promo_id, "deciding", status, reason=reason, gate=figures)
    add_event(db, promo.job_id, message, level=level, data={"promotion": status})
    return True


def _promote(db: Database, owner: Owner, promo: Promotion, record, check):
    actor = f"job:{promo.job_id}"
    for _ in range(3):  # someone else moved the alias meanwhile: check against what won
        try:
            return aliases.promote(db, owner, promo.alias, record, actor, check)
        except aliases.GateRefusedError:
            raise
        except ConflictError as e:
            if "meanwhile" not in e.message:
                raise
    return aliases.promote(db, owner, promo.alias, record, actor, check)


def _last_move(db: Database, owner: Owner, alias: str) -> dict[str, Any]:
    return aliases.list_moves(db, owner, alias)[-1]
