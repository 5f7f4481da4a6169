"""`ownllm tenants`: tenant-wide operations. `purge-data` erases what a tenant stored.

    ownllm tenants purge-data acme --yes

deletes the tenant's rows in every table (stored completions, guard events,
usage, files, fine-tuning jobs and their events and checkpoints, adapters,
quota counters, API keys, the tenant itself) and their blobs under the data
dir, then reports what it removed. `--keep-account` keeps the tenant and its
keys. Creating tenants and keys is `ownllm keys`.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    purge = sub.add_parser("purge-data", help="delete every row and file a tenant stored")
    add_config_arguments(purge)
    purge.add_argument("tenant", metavar="TENANT")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--keep-account", action="store_true",
                       help="keep the tenant row and its API keys; delete only its data")  # fmt: skip
    purge.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import fail, open_database
    from ownllm.gateway.purge import purge_tenant
    from ownllm.store.blobs import DataDir

    if not args.yes:
        if not sys.stdin.isatty():
            return fail("purge-data deletes data for good: pass --yes to confirm")
        answer = input(f"Delete everything tenant {args.tenant!r} stored? Type its name: ")
        if answer.strip() != args.tenant:
            return fail("not confirmed; nothing deleted", code=1)
    config, db = open_database(args)
    try:
        report = purge_tenant(db, DataDir(config.store.home), args.tenant,
                              keep_account=args.keep_account)  # fmt: skip
    finally:
        db.close()
    if args.json:
        print(json.dumps({"tenant": report.tenant_id, "rows": report.rows,
                          "paths": report.paths, "bytes": report.num_bytes}))  # fmt: skip
        return 0
    print(f"tenant {report.tenant_id}: deleted {report.num_rows} rows and "
          f"{len(report.paths)} files/directories ({report.num_bytes:,} bytes)")  # fmt: skip
    for table, n in sorted(report.rows.items()):
        print(f"  {table:<20} {n}")
    for path in report.paths:
        print(f"  removed {path}")
    return 0
