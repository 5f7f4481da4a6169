"""`ownllm models aliases|alias|gate|promote|rollback|history|unalias`: a tenant's model
aliases from a shell.

Works on the database directly, as the operator acting for `--tenant` (default: the admin,
tenant `@admin`); a running server sees each move at once (it reads the alias once per
request). `promote` moves the alias only when its gate passes and prints the figures
either way; `rollback` returns to the version before.

    ownllm models alias support --to base --gate-eval support-holdout:0.8 --max-redteam 0.05
    ownllm models promote support --to ft:smollm2-135m-instruct:acme:support:ftjob-…
    ownllm models rollback support
    ownllm models history support
"""

from __future__ import annotations

import argparse
import json
import time

from ownllm.cli.common import add_config_arguments, base_model_id, closing, fail, open_database


def _tenant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="the alias's tenant (default: the admin, @admin)")


def _gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gate-eval",
        action="append",
        default=[],
        metavar="EVAL:MIN[:CRITERION]",
        help="an eval (name or id) whose latest run on the candidate must pass at least MIN "
        "(0-1), of one testing criterion if named; repeat for more",
    )
    p.add_argument(
        "--max-redteam",
        type=float,
        metavar="RATE",
        help="the highest red-team attack success rate (0-1) a candidate may show",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("aliases", help="list the tenant's aliases and what they point at")
    _tenant(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("alias", help="create an alias at a version (an adapter or the base)")
    p.add_argument("name")
    p.add_argument("--to", default="base", help="adapter name or id, or `base` (default)")
    _gate_arguments(p)
    _tenant(p)
    p = sub.add_parser("gate", help="replace an alias's gate")
    p.add_argument("name")
    _gate_arguments(p)
    _tenant(p)
    p = sub.add_parser("promote", help="move an alias to a version if its gate passes")
    p.add_argument("name")
    p.add_argument("--to", required=True, help="adapter name or id, or `base`")
    _tenant(p)
    p = sub.add_parser("rollback", help="return an alias to its previous version")
    p.add_argument("name")
    _tenant(p)
    p = sub.add_parser("history", help="an alias's moves and refusals, with the gate's figures")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    _tenant(p)
    p = sub.add_parser("unalias", help="delete an alias (its versions stay)")
    p.add_argument("name")
    _tenant(p)


def parse_gate(args: argparse.Namespace):
    from ownllm.adapters.aliases import Gate

    evals = []
    for spec in args.gate_eval:
        name, sep, rest = spec.partition(":")
        minimum, _, criterion = rest.partition(":")
        try:
            value = float(minimum)
        except ValueError:
            raise ValueError(f"--gate-eval {spec!r}: expected EVAL:MIN, e.g. holdout:0.8") from None
        evals.append(
            {
                "eval": name,
                "min_pass_rate": value,
                **({"criterion": criterion} if criterion else {}),
            }
        )
    return Gate.from_dict({"evals": evals, "max_redteam_success_rate": args.max_redteam})


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def print_report(report: dict) -> None:
    for figure in report.get("figures", ()):
        if figure.get("redteam"):
            rate = figure["attack_success_rate"]
            shown = "-" if rate is None else f"{rate:.3f}"
            print(
                f"  red-team attack success {shown}  (max {figure['max_attack_success_rate']:.3f})"
            )
        else:
            rate = figure["pass_rate"]
            shown = "-" if rate is None else f"{rate:.3f}"
            name = figure["eval"] + (f" [{figure['criterion']}]" if figure.get("criterion") else "")
            print(f"  eval {name}: pass rate {shown}  (min {figure['min_pass_rate']:.3f})")
    for reason in report.get("reasons", ()):
        print(f"  refused: {reason}")


def run(args: argparse.Namespace) -> int:
    from ownllm.adapters import aliases
    from ownllm.evals.gate import check_gate
    from ownllm.gateway.principal import ADMIN_TENANT, Principal

    config, db = open_database(args)
    base = base_model_id(config)
    operator = Principal(tenant_id=args.tenant or ADMIN_TENANT, is_admin=True)
    actor = "cli"

    def named(alias) -> str:
        if alias.target is None:
            return base
        from ownllm.adapters.registry import resolve_model as find

        record = find(db, operator, alias.target)
        return record.name if record is not None else alias.target

    with closing(db, code=1, bad_input=(ValueError,)):
        if args.action == "aliases":
            records = aliases.list_aliases(db, operator)
            if args.json:
                print(json.dumps([r.to_dict(named(r)) for r in records], indent=2))
            for r in records if not args.json else ():
                print(f"{r.name}  ->  {named(r)}  (version {r.version}, {_when(r.updated_at)})")
            if not records and not args.json:
                print("no aliases")
        elif args.action == "alias":
            target = aliases.resolve_target(db, operator, args.to, base, param="--to")
            record = aliases.create_alias(db, operator, args.name, target, parse_gate(args), actor)
            print(f"{record.name}  ->  {named(record)}  (version 1)")
        elif args.action == "gate":
            record = aliases.set_gate(db, operator, args.name, parse_gate(args))
            print(json.dumps(record.gate.to_dict()))
        elif args.action == "promote":
            aliases.get_alias(db, operator, args.name)
            target = aliases.resolve_target(db, operator, args.to, base, param="--to")
            try:
                record = aliases.promote(
                    db, operator, args.name, target, actor, check_gate(db, operator.tenant_id)
                )
            except aliases.GateRefusedError as e:
                print(f"{args.name}: not promoted to {args.to}")
                print_report(aliases.list_moves(db, operator, args.name)[-1]["gate"])
                return fail(e.message, code=1)
            print(f"{record.name}  ->  {named(record)}  (version {record.version})")
            print_report(aliases.list_moves(db, operator, args.name)[-1]["gate"])
        elif args.action == "rollback":
            record = aliases.rollback(db, operator, args.name, actor)
            print(f"{record.name}  ->  {named(record)}  (version {record.version})")
        elif args.action == "history":
            moves = aliases.list_moves(db, operator, args.name)
            if args.json:
                print(json.dumps(moves, indent=2))
            for m in moves if not args.json else ():
                print(
                    f"{_when(m['created_at'])}  v{m['version']}  {m['action']:<8}  "
                    f"{m['from_adapter_id'] or base} -> {m['to_adapter_id'] or base}  by {m['actor']}"
                )
                if m["action"] in ("promote", "refused"):
                    print_report(m["gate"])
        elif args.action == "unalias":
            aliases.delete_alias(db, operator, args.name)
            print(f"deleted alias {args.name}")
    return 0
