"""The `ownllm` command: a thin dispatcher that imports one command module on demand.

Each command lives in `ownllm/cli/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`; `ownllm --help` imports none of them, so it answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ownllm import __version__

# name -> (module, one-line help). Later commands register here.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ownllm.cli.serve", "Start the OpenAI-compatible server."),
    "chat": ("ownllm.cli.chat", "Chat with a running server in the terminal (or -p once)."),
    "config": ("ownllm.cli.config", "Show the effective configuration or the settings table."),
    "keys": ("ownllm.cli.keys", "Create, list and revoke API keys; tenants and limits."),
    "usage": ("ownllm.cli.usage", "Usage ledger totals by day, model, key or tenant."),
    "cost": ("ownllm.cli.cost", "Self-hosted cost vs paid APIs, now and for a scenario."),
    "bench": ("ownllm.cli.bench", "Measure this box's saturated capacity (for ownllm cost)."),
    "adapters": ("ownllm.cli.adapters", "Manage LoRA adapters: list, import, compose, export."),
    "eval": ("ownllm.cli.eval", "Evals: create, run against a model or alias, show, compare."),
    "redteam": ("ownllm.cli.redteam", "Run the shipped red-team suite against a model or alias."),
    "models": ("ownllm.cli.models", "Model aliases: create, promote through a gate, roll back."),
    "tune": ("ownllm.cli.tune", "Fine-tune the served model on a chat JSONL file (LoRA)."),
    "jobs": ("ownllm.cli.jobs", "Fine-tuning jobs: list, show, events, cancel."),
    "batch": ("ownllm.cli.batch", "Batches: submit a JSONL file of requests, list, show, cancel."),
    "worker": ("ownllm.cli.worker", "Run a fine-tuning worker that trains queued jobs."),
    "data": ("ownllm.cli.data", "Export stored completions as fine-tuning JSONL."),
    "tenants": ("ownllm.cli.tenants", "Tenant-wide operations: purge-data erases a tenant's data."),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="ownllm",
        description="Own your LLM: serve, fine-tune and govern open models on your own hardware.",
        epilog=f"commands:\n{lines}\n\nRun `ownllm COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ownllm {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        args = parser.parse_args(argv[:1] if argv else [])
        if args.command is None:
            parser.print_help()
            return 0
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ownllm {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from ownllm.cli.common import CommandError, fail

    try:
        return int(module.run(args) or 0)
    except CommandError as e:
        return fail(e.message, e.code)
    except KeyboardInterrupt:
        return 130
