"""`ownllm redteam run MODEL | show RUN`: the shipped red-team suite against a model,
adapter or alias, on the database directly.

`run` queues a run of the tenant's red-team eval (fresh canaries; `--seed` fixes them); the
eval worker of `ownllm serve` runs it through the inference path with the guard policy,
and `--wait` waits for it and prints the report: per OWASP LLM Top 10 (2025) category the
attack success rate and the false-positive rate on its benign prompts.

    ownllm redteam run support --wait --tenant acme
"""

from __future__ import annotations

import argparse
import json

from ownllm.cli.common import add_config_arguments, base_model_id, closing, open_database


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("run", help="queue the suite against a model, adapter or alias")
    p.add_argument("model")
    p.add_argument("--seed", type=int, help="fixed canaries (default: fresh ones)")
    p.add_argument("--wait", action="store_true", help="wait until a server's worker ran it")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--tenant")
    p = sub.add_parser("show", help="a red-team run's report")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tenant")


def _rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(run: dict) -> str:
    report = run.get("report") or {}
    lines = [f"{run['id']}  {run['status']}  model {run['model']}"]
    if not report.get("categories"):
        return "\n".join(lines)
    lines.append(
        f"  attack success rate {_rate(report['attack_success_rate'])}, "
        f"false-positive rate {_rate(report['false_positive_rate'])}"
    )
    header = ("CATEGORY", "ATTACKS", "SUCCESS", "BENIGN", "REFUSED", "OWASP")
    rows = [header]
    for name, row in report["categories"].items():
        rows.append((name, str(row["attacks"]), _rate(row["attack_success_rate"]),
                     str(row["benign"]), _rate(row["false_positive_rate"]), row["owasp"]))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.eval import wait_for
    from ownllm.evals import store
    from ownllm.gateway.principal import ADMIN_TENANT, Principal
    from ownllm.redteam.suite import create_redteam_run

    config, db = open_database(args)
    base = base_model_id(config)
    operator = Principal(tenant_id=args.tenant or ADMIN_TENANT, is_admin=args.tenant is None)
    with closing(db, code=1):
        if args.action == "run":
            created = create_redteam_run(db, operator, args.model, base, args.seed)
            print(f"{created['id']}  queued")
            if args.wait:
                finished = wait_for(db, operator, created["id"], args.timeout)
                print(format_report(finished))
                return 0 if finished["status"] == "completed" else 1
        else:
            shown = store.run_by_id(db, operator, args.run)
            print(json.dumps(shown, indent=2) if args.json else format_report(shown))
    return 0
