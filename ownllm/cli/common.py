"""Helpers shared by commands: config from flags, the database of the config, one-line
fatal errors.

A command ends with `ownllm: error: MESSAGE` on stderr either by returning `fail(...)` or
by raising `CommandError` (which `ownllm.cli.main` turns into the same line and status);
the helpers below raise it, so a command opens its database in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ownllm.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ownllm.api.state import AppState
    from ownllm.store.db import Database


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default ./ownllm.toml)")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (env OWNLLM_HOME)")


def config_from_args(
    args: argparse.Namespace,
    sections: dict[str, dict[str, Any]],
    backends: list[dict[str, Any]] | None = None,
) -> Config:
    """The Config of a command: its flags (`sections`) over the file and environment;
    `backends` (from `--backend`), when any, replace the file's `[[backends]]`."""
    overrides: dict[str, Any] = {section: dict(values) for section, values in sections.items()}
    overrides.setdefault("store", {})["data_dir"] = getattr(args, "data_dir", None)
    if backends:
        overrides["backends"] = backends
    return load_config(getattr(args, "config", None), overrides=overrides)


def fail(message: str, code: int = 2) -> int:
    print(f"ownllm: error: {message}", file=sys.stderr)
    return code


class CommandError(Exception):
    """Ends the command as `fail(message, code)` would (caught by `ownllm.cli.main`)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def open_database(args: argparse.Namespace, *, data_dir: bool = False) -> tuple[Config, Database]:
    """The command's config and its database, opened and migrated (with `data_dir`, the
    data directory is made first). A bad config or database ends the command (status 2)."""
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database, DatabaseError

    try:
        config = config_from_args(args, {})
        if data_dir:
            DataDir(config.store.home).ensure()
        return config, Database.open(config.store.url)
    except (ConfigError, DatabaseError) as e:
        raise CommandError(str(e)) from None


def server_state(config: Config) -> AppState:
    """What a server of `config` runs on (model, tokenizer, database: `build_state`); one
    that cannot be loaded ends the command (status 2)."""
    from ownllm.api.app import build_state
    from ownllm.models.catalog import ModelLoadError
    from ownllm.models.tokenizer import TokenizerError
    from ownllm.store.db import DatabaseError

    try:
        return build_state(config)
    except (ModelLoadError, TokenizerError, DatabaseError) as e:
        raise CommandError(str(e)) from None


def base_model_id(config: Config) -> str:
    """The id of the configured base model; one that cannot be found ends the command
    (status 2)."""
    from ownllm.models import resolve_model

    try:
        return resolve_model(config.model.model, config.model.name).id
    except ValueError as e:
        raise CommandError(str(e)) from None


@contextmanager
def closing(
    db: Database, code: int = 2, bad_input: tuple[type[Exception], ...] = ()
) -> Iterator[Database]:
    """`db`, closed at the end. An OwnLLMError the command raises ends it with its message
    and status `code`; one of `bad_input` with its text and status 2."""
    from ownllm.errors import OwnLLMError

    try:
        yield db
    except OwnLLMError as e:
        raise CommandError(e.message, code) from None
    except bad_input as e:
        raise CommandError(str(e)) from None
    finally:
        db.close()


__all__ = [
    "CommandError",
    "ConfigError",
    "add_config_arguments",
    "base_model_id",
    "closing",
    "config_from_args",
    "fail",
    "open_database",
    "server_state",
]
