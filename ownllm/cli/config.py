"""`ownllm config`: the effective configuration, or every setting as a table.

Secrets are never printed: the admin key shows as `***`, and so does the password of
any URL (`postgresql+psycopg://user:***@host/db`, `?password=***`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Query parameters that carry a credential in database and service URLs.
_SECRET_PARAM = re.compile(
    r"([?&](?:password|passwd|pwd|sslpassword|secret|token|api_key|apikey|access_token)=)[^&#]*",
    re.IGNORECASE,
)


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
    print(json.dumps(_masked(values), indent=2))
    return 0


def mask_credentials(url: str) -> str:
    """`url` with its password (userinfo or a query parameter) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")  # rpartition: an unescaped @ in the password
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    masked = urlunsplit(parts._replace(netloc=netloc)) if netloc != parts.netloc else url
    return _SECRET_PARAM.sub(r"\1***", masked)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, str) and "://" in value:
        return mask_credentials(value)
    return value
