"""An alias's gate on a candidate version, read from finished eval and red-team runs.

`check_gate(db, tenant_id)` is the `check` that `ownllm.adapters.aliases.promote` calls:
for each eval threshold of the gate, the latest completed run of that eval (the tenant's,
by name or id) on the candidate version — the same adapter, or the base model — and its
pass rate (one criterion's, or the share of items that passed every criterion); for the
red-team limit, the latest completed red-team run on the candidate and its overall attack
success rate. A figure with no run behind it fails and says what to run; the gate runs
nothing itself (the unattended loop, `ownllm.evals.loop`, runs them first).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ownllm.adapters.aliases import AliasRecord, GateCheck, GateReport
from ownllm.adapters.registry import AdapterRecord
from ownllm.store.db import Database
from ownllm.store.schema import EvalDefinition, EvalRun


def find_eval_row(session, tenant_id: str, ref: str) -> EvalDefinition | None:
    """The tenant's eval `ref`: by id, else the newest of that name."""
    row = session.get(EvalDefinition, ref)
    if row is not None and row.tenant_id == tenant_id:
        return row
    query = (
        select(EvalDefinition)
        .where(EvalDefinition.tenant_id == tenant_id, EvalDefinition.name == ref)
        .order_by(EvalDefinition.created_at.desc(), EvalDefinition.id.desc())
    )
    return session.scalars(query).first()


def _latest_run(session, tenant_id: str, adapter_id: str | None, **where: Any) -> EvalRun | None:
    query = select(EvalRun).where(
        EvalRun.tenant_id == tenant_id,
        EvalRun.status == "completed",
        EvalRun.adapter_id.is_(None) if adapter_id is None else EvalRun.adapter_id == adapter_id,
    )
    if "eval_id" in where:
        query = query.where(EvalRun.eval_id == where["eval_id"])
    if where.get("kind"):
        query = query.join(EvalDefinition, EvalDefinition.id == EvalRun.eval_id).where(
            EvalDefinition.kind == where["kind"]
        )
    query = query.order_by(EvalRun.created_at.desc(), EvalRun.id.desc())
    return session.scalars(query).first()


def run_pass_rate(run: EvalRun, criterion: str | None = None) -> float | None:
    """The run's pass rate: of one criterion (by name), or the share of items that passed
    every criterion (an item that errored did not pass); None when nothing was graded."""
    if criterion is not None:
        for result in run.per_testing_criteria_results or ():
            if result.get("testing_criteria") == criterion:
                total = result.get("passed", 0) + result.get("failed", 0)
                return result["passed"] / total if total else None
        return None
    counts = run.result_counts or {}
    total = counts.get("total", 0)
    return counts.get("passed", 0) / total if total else None


def version_label(target: AdapterRecord | None) -> str:
    return target.name if target is not None else "the base model"


def check_gate(db: Database, tenant_id: str) -> GateCheck:
    """The gate check of the tenant's aliases (see the module docstring)."""

    def check(alias: AliasRecord, target: AdapterRecord | None) -> GateReport:
        adapter_id = target.id if target is not None else None
        label = version_label(target)
        figures: list[dict[str, Any]] = []
        reasons: list[str] = []
        with db.session() as s:
            for threshold in alias.gate.evals:
                figure: dict[str, Any] = {**threshold.to_dict(), "pass_rate": None, "run_id": None}
                figures.append(figure)
                row = find_eval_row(s, tenant_id, threshold.eval)
                run = _latest_run(s, tenant_id, adapter_id, eval_id=row.id) if row else None
                if run is None:
                    reasons.append(
                        f"no completed run of eval {threshold.eval!r} on {label} "
                        f"(run `ownllm eval run {threshold.eval} --model {label}`)"
                    )
                    continue
                rate = run_pass_rate(run, threshold.criterion)
                figure.update(pass_rate=rate, run_id=run.id)
                if rate is None or rate < threshold.min_pass_rate:
                    shown = "nothing graded" if rate is None else f"{rate:.3f}"
                    reasons.append(
                        f"eval {threshold.eval!r}: pass rate {shown} on {label} is below "
                        f"{threshold.min_pass_rate:.3f} (run {run.id})"
                    )
            limit = alias.gate.max_redteam_success_rate
            if limit is not None:
                run = _latest_run(s, tenant_id, adapter_id, kind="redteam")
                rate = (run.report or {}).get("attack_success_rate") if run else None
                figures.append(
                    {
                        "redteam": True,
                        "max_attack_success_rate": limit,
                        "attack_success_rate": rate,
                        "run_id": run.id if run else None,
                    }
                )
                if run is None or rate is None:
                    reasons.append(
                        f"no completed red-team run on {label} (run `ownllm redteam run {label}`)"
                    )
                elif rate > limit:
                    reasons.append(
                        f"red-team attack success rate {rate:.3f} on {label} is above "
                        f"{limit:.3f} (run {run.id})"
                    )
        return GateReport(not reasons, tuple(figures), tuple(reasons))

    return check
