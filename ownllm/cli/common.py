"""Helpers shared by commands: config from flags, one-line fatal errors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ownllm.config import Config, ConfigError, load_config


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


__all__ = ["ConfigError", "add_config_arguments", "config_from_args", "fail"]
