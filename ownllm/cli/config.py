"""`ownllm config`: the effective configuration, or every setting as a table."""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--table", action="store_true", help="print the settings table (Markdown)")


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import ConfigError, config_from_args, fail
    from ownllm.config import settings_table

    if args.table:
        print(settings_table())
        return 0
    try:
        config = config_from_args(args, {})
    except ConfigError as e:
        return fail(str(e))
    values = dataclasses.asdict(config)
    if values["auth"]["admin_key"]:
        values["auth"]["admin_key"] = "***"  # a secret: never printed
    print(json.dumps(values, indent=2))
    return 0
