"""`ownllm serve`: prepare the model, open the database, start the HTTP server."""

from __future__ import annotations

import argparse
import logging

from ownllm.gateway.principal import is_loopback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--model", metavar="PATH|ID", help="catalog id, HF model dir or .gguf file")
    parser.add_argument("--name", help="model id served to clients")
    parser.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import ConfigError, config_from_args, fail

    try:
        config = config_from_args(
            args,
            {
                "server": {"host": args.host, "port": args.port},
                "model": {"model": args.model, "name": args.name, "dtype": args.dtype},
            },
        )
        from ownllm.gateway.guard.policy import load_policy

        load_policy(config.guard.policy_file or None)  # a bad policy stops here, before the model
    except ConfigError as e:
        return fail(str(e))
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ownllm.api.app import build_state, create_app
    from ownllm.models.catalog import ModelLoadError
    from ownllm.models.tokenizer import TokenizerError
    from ownllm.store.db import DatabaseError

    problem = _auth_problem(config)
    if problem:
        return fail(problem)
    try:
        state = build_state(config)
    except (ModelLoadError, TokenizerError, DatabaseError) as e:
        return fail(str(e))
    import uvicorn

    try:
        app = create_app(state)
    except ConfigError as e:  # the guard's classifier cannot be loaded
        return fail(str(e))
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=config.server.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0


def _auth_problem(config) -> str | None:
    """Refuse a non-loopback address without keys (checked before the model loads)."""
    from ownllm.gateway.auth import startup_problem
    from ownllm.store.db import Database, DatabaseError

    if is_loopback(config.server.host) or config.auth.admin_key:
        return None
    try:
        db = Database.open(config.store.url)
    except DatabaseError as e:
        return str(e)
    try:
        return startup_problem(db, config.server.host, config.auth.admin_key)
    finally:
        db.close()
