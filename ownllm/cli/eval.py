"""`ownllm eval create|run|show|compare`: evals from a shell, on the database directly.

`create` stores the items (a JSONL of {"item": {...}} or bare objects) as a file of
purpose `evals` and the eval with its testing criteria (a JSON list, OpenAI's shape) and
the prompt template runs use. `run` queues a run against a model, adapter or alias; the
eval worker of `ownllm serve` (any server on this database) runs it, and `--wait` waits
for it. `compare` prints two runs side by side: per criterion the pass rates, the delta
and its 95% interval (Newcombe's hybrid score interval), and the items that changed.

    ownllm eval create support-holdout --items holdout.jsonl --criteria criteria.json \\
        --template "{{item.question}}" --tenant acme
    ownllm eval run support-holdout --model support --wait --tenant acme
    ownllm eval compare evalrun-… evalrun-… --tenant acme
"""

from __future__ import annotations

import argparse
import json
import time

from ownllm.cli.common import add_config_arguments, base_model_id, closing, fail, open_database

TEMPLATE_KEY, FILE_KEY, MAX_TOKENS_KEY = "ownllm_template", "ownllm_items_file", "ownllm_max_tokens"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("create", help="create an eval from a JSONL of items and a criteria file")
    p.add_argument("name")
    p.add_argument("--items", required=True, help="JSONL: one {'item': {...}} (or object) a line")
    p.add_argument("--criteria", required=True, help="JSON list of testing criteria")
    p.add_argument("--template", default="{{item.input}}", help="the user message of each item")
    p.add_argument("--system", help="a system message before it")
    p.add_argument("--max-tokens", type=int, default=128, help="per sample (default 128)")
    p.add_argument("--tenant")
    p = sub.add_parser("run", help="queue a run of an eval against a model, adapter or alias")
    p.add_argument("eval", help="eval name or id")
    p.add_argument("--model", required=True)
    p.add_argument("--wait", action="store_true", help="wait until a server's worker ran it")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits")
    p.add_argument("--tenant")
    p = sub.add_parser("show", help="a run's counts per criterion (and --items its items)")
    p.add_argument("run")
    p.add_argument("--items", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tenant")
    p = sub.add_parser("compare", help="two runs side by side, with a 95%% interval of the delta")
    p.add_argument("base_run")
    p.add_argument("candidate_run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tenant")


def read_items(path: str) -> list[dict]:
    from ownllm.evals.store import item_lines

    with open(path, encoding="utf-8") as f:
        items = list(item_lines(f, path, ValueError))
    if not items:
        raise ValueError(f"{path} has no items")
    return items


def item_schema(items: list[dict]) -> dict:
    """The keys every item has, required (values of any type)."""
    keys = set(items[0]["item"])
    for entry in items[1:]:
        keys &= set(entry["item"])
    return {"type": "object", "required": sorted(keys)}


def data_source_of(evaluation: dict, model: str) -> dict:
    meta = evaluation.get("metadata") or {}
    if FILE_KEY not in meta:
        raise ValueError(f"eval {evaluation['name']!r} was not made by `ownllm eval create`: "
                         "create its runs over the API with their data source")  # fmt: skip
    template = json.loads(meta[TEMPLATE_KEY])
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": template},
        "sampling_params": {"max_completion_tokens": int(meta.get(MAX_TOKENS_KEY, 128))},
        "source": {"type": "file_id", "id": meta[FILE_KEY]},
    }


def wait_for(db, principal, run_id: str, timeout_s: float) -> dict:
    from ownllm.evals import store

    deadline = time.monotonic() + timeout_s
    while True:
        run = store.run_by_id(db, principal, run_id)
        if run["status"] not in store.OPEN_STATUSES or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def summary(run: dict) -> str:
    counts = run["result_counts"]
    lines = [
        f"{run['id']}  {run['status']}  model {run['model']}"
        + (f" ({run['adapter_id']})" if run["adapter_id"] else ""),
        f"  items {counts['total']}: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['errored']} errored",
    ]
    for c in run["per_testing_criteria_results"]:
        total = c["passed"] + c["failed"]
        rate = c["passed"] / total if total else 0.0
        lines.append(f"  {c['testing_criteria']}: {rate:.3f} ({c['passed']}/{total})")
    for key, value in (run.get("report") or {}).items():
        lines.append(f"  {key}: {json.dumps(value)}")
    if run["error"]:
        lines.append(f"  error: {run['error'].get('message')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ownllm.evals import store
    from ownllm.evals.compare import compare_runs, format_table
    from ownllm.gateway.principal import ADMIN_TENANT, Principal
    from ownllm.store.blobs import DataDir
    from ownllm.tuning.files import save_bytes

    config, db = open_database(args, data_dir=True)
    data_dir = DataDir(config.store.home)
    base = base_model_id(config)
    operator = Principal(tenant_id=args.tenant or ADMIN_TENANT, is_admin=args.tenant is None)
    with closing(db, code=1, bad_input=(ValueError, OSError)):
        if args.action == "create":
            items = read_items(args.items)
            with open(args.criteria, encoding="utf-8") as f:
                criteria = json.load(f)
            content = "".join(json.dumps(e) + "\n" for e in items).encode()
            file = save_bytes(db, data_dir, [content], tenant_id=operator.tenant_id,
                              filename=args.items.rsplit("/", 1)[-1], purpose="evals")  # fmt: skip
            template = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": args.template}
            ]
            evaluation = store.create_eval(
                db,
                operator,
                name=args.name,
                data_source_config={"type": "custom", "item_schema": item_schema(items)},
                testing_criteria=criteria,
                metadata={
                    FILE_KEY: file.id,
                    TEMPLATE_KEY: json.dumps(template),
                    MAX_TOKENS_KEY: str(args.max_tokens),
                },  # fmt: skip
            )
            print(f"{evaluation['id']}  {args.name}  {len(items)} items, "
                  f"{len(evaluation['testing_criteria'])} criteria")  # fmt: skip
        elif args.action == "run":
            evaluation = store.get_eval(db, operator, args.eval)
            adapter_id = store.pinned_version(db, operator, args.model, base)
            created = store.create_run(db, operator, evaluation["id"], adapter_id=adapter_id,
                                       data_source=data_source_of(evaluation, args.model))  # fmt: skip
            print(f"{created['id']}  queued")
            if args.wait:
                finished = wait_for(db, operator, created["id"], args.timeout)
                print(summary(finished))
                return 0 if finished["status"] == "completed" else 1
        elif args.action == "show":
            shown = store.run_by_id(db, operator, args.run)
            items = store.run_items(db, shown["id"]) if args.items else {}
            if args.json:
                print(json.dumps({**shown, "items": items}, indent=2))
            else:
                print(summary(shown))
                for index, entry in sorted(items.items()):
                    output = ((entry["sample"] or {}).get("output") or [{"content": ""}])[0][
                        "content"
                    ]
                    print(f"  #{index} {entry['status']}: {output[:60]!r}")
        elif args.action == "compare":
            a = store.run_by_id(db, operator, args.base_run)
            b = store.run_by_id(db, operator, args.candidate_run)
            if a["eval_id"] != b["eval_id"]:
                return fail("the two runs are of different evals")
            criteria = store.get_eval(db, operator, a["eval_id"])["testing_criteria"]
            result = compare_runs(
                criteria, store.run_items(db, a["id"]), store.run_items(db, b["id"])
            )
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(format_table(result, a["model"], b["model"]))
    return 0
