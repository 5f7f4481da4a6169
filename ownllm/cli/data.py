"""`ownllm data export`: stored completions → chat fine-tuning JSONL (and optionally a file).

    ownllm data export --tenant acme --since 30d --min-rating 4 --out train.jsonl --upload

Corrected answers replace the model's; answers rated 1-2 without a correction and
unrated cut-off answers are left out; duplicates are dropped (see `ownllm.gateway.capture`).
`--upload` also stores the JSONL as a `fine-tune` file of the tenant and prints its id,
ready for `ownllm tune --training-file FILE_ID` or the fine-tuning API.

`--preferences` writes preference pairs for DPO instead (`method: {"type": "dpo"}`): a
correction is preferred over the model's answer, and of two rated answers to the same
prompt the higher-rated one (see `ownllm.gateway.preferences`).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = sub.add_parser("export", help="build fine-tuning JSONL from stored completions")
    add_config_arguments(export)
    export.add_argument("--tenant", help="only this tenant's completions (required with --upload)")
    export.add_argument("--since", help="only completions since: 7d, 24h, YYYY-MM-DD, Unix seconds")
    export.add_argument("--min-rating", type=int, choices=range(1, 6), metavar="1-5",
                        help="only answers rated at least this (corrected answers always count)")  # fmt: skip
    export.add_argument("--model", help="only completions of this model id")
    export.add_argument("--preferences", action="store_true",
                        help="write DPO preference pairs (corrections, ratings) instead")  # fmt: skip
    export.add_argument("--out", required=True, metavar="FILE", help="where to write the JSONL")
    export.add_argument("--upload", action="store_true",
                        help="also store it as a fine-tune file of --tenant and print its id")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import ConfigError, config_from_args, fail
    from ownllm.errors import OwnLLMError
    from ownllm.gateway.capture import export_dataset, to_jsonl
    from ownllm.gateway.usage import parse_since
    from ownllm.store.db import Database, DatabaseError

    if args.upload and not args.tenant:
        return fail("--upload needs --tenant: the file belongs to one tenant")
    if args.preferences and args.min_rating is not None:
        return fail("--min-rating does not apply to --preferences: every rating is evidence")
    try:
        config = config_from_args(args, {})
        since = parse_since(args.since)
        db = Database.open(config.store.url)
    except (ConfigError, DatabaseError) as e:
        return fail(str(e))
    except OwnLLMError as e:
        return fail(e.message)
    try:
        if args.preferences:
            return _export_preferences(db, config, args, since)
        examples, stats = export_dataset(
            db,
            tenant_id=args.tenant,
            since=None if since is None else int(since),
            min_rating=args.min_rating,
            model=args.model,
        )
        if not examples:
            return fail(f"no stored completions to export ({stats.num_rows} matched the filters, "
                        f"{stats.num_skipped} left out)", code=1)  # fmt: skip
        data = to_jsonl(examples)
        with open(args.out, "wb") as f:
            f.write(data)
        print(f"wrote {stats.num_exported} examples to {args.out} ({stats.num_corrected} corrected; "
              f"{stats.num_duplicates} duplicates and {stats.num_skipped} unusable left out)",
              file=sys.stderr)  # fmt: skip
        if args.upload:
            _upload(db, config, args, data)
        return 0
    finally:
        db.close()


def _upload(db, config, args, data: bytes) -> None:
    from ownllm.store.blobs import DataDir
    from ownllm.tuning.files import save_bytes

    data_dir = DataDir(config.store.home).ensure()
    name = args.out.rsplit("/", 1)[-1]
    row = save_bytes(db, data_dir, [data], tenant_id=args.tenant, filename=name,
                     purpose="fine-tune")  # fmt: skip
    print(row.id)


def _export_preferences(db, config, args, since) -> int:
    from ownllm.cli.common import fail
    from ownllm.gateway.capture import to_jsonl
    from ownllm.gateway.preferences import export_preferences

    pairs, stats = export_preferences(
        db, tenant_id=args.tenant, since=None if since is None else int(since), model=args.model
    )
    if not pairs:
        return fail(f"no preference pairs to export ({stats.num_rows} stored completions "
                    "matched; pairs need a correction or two different ratings of one prompt)",
                    code=1)  # fmt: skip
    data = to_jsonl(pairs)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {stats.num_exported} preference pairs to {args.out} ({stats.num_corrected} "
          f"from corrections, {stats.num_rated} from ratings; {stats.num_duplicates} duplicates "
          "left out)", file=sys.stderr)  # fmt: skip
    if args.upload:
        _upload(db, config, args, data)
    return 0
