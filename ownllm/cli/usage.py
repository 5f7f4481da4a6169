"""`ownllm usage`: the usage ledger aggregated by day, model, key, tenant, status or
endpoint.

The same aggregation as `GET /v1/usage`, read straight from the database of the config.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--tenant", help="only this tenant")
    parser.add_argument("--since", help="7d, 24h, 30m, a date YYYY-MM-DD or Unix seconds")
    parser.add_argument("--until", help="same forms as --since")
    parser.add_argument(
        "--by",
        default="day",
        choices=("day", "model", "key", "tenant", "status", "endpoint"),
        help="group rows by (default day)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")


COLUMNS = (
    ("requests", 9),
    ("ok", 7),
    ("error", 7),
    ("cancelled", 9),
    ("disconnected", 12),
    ("prompt_tokens", 13),
    ("completion_tokens", 17),
    ("trained_tokens", 14),
    ("bytes", 12),
    ("mean_latency_ms", 15),
    ("mean_ttft_ms", 12),
)
MEANS = ("mean_latency_ms", "mean_ttft_ms")  # no total


def format_table(by: str, rows: list[dict]) -> str:
    width = max([len(by)] + [len(str(r[by])) for r in rows]) + 2
    lines = [by.upper().ljust(width) + " ".join(n.upper().rjust(w) for n, w in COLUMNS)]
    for r in rows:
        cells = ["-" if r[n] is None else str(r[n]) for n, _ in COLUMNS]
        lines.append(
            str(r[by]).ljust(width) + " ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS))
        )
    if rows:
        cells = ["" if n in MEANS else str(sum(r[n] for r in rows)) for n, _ in COLUMNS]
        lines.append(
            "total".ljust(width) + " ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS))
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import closing, open_database
    from ownllm.gateway.usage import parse_since, summarize

    _, db = open_database(args)
    with closing(db):
        rows = summarize(
            db,
            by=args.by,
            tenant_id=args.tenant,
            since=parse_since(args.since),
            until=parse_since(args.until),
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print("no requests in the ledger for this selection")
    else:
        print(format_table(args.by, rows))
    return 0
