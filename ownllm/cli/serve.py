"""`ownllm serve`: prepare the model, open the database, start the HTTP server.

At the info level the log says, once, what an operator needs: the model; its dtype,
device, threads and kernel path; the KV-cache capacity; the worker; the address and
auth mode. Then one line per request (uvicorn's access log). uvicorn's own lifecycle
lines ("Started server process", "Waiting for application startup") are left out
there; its warnings and errors (a port in use, a failed startup) still show.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from ownllm.gateway.principal import is_loopback

log = logging.getLogger("ownllm")
STARTUP_FAILURE = 3  # uvicorn's exit status when the app cannot start or bind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--model", metavar="PATH|ID", help="catalog id, HF model dir or .gguf file")
    parser.add_argument("--name", help="model id served to clients")
    parser.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    parser.add_argument(
        "--quantization", help="none | auto | q4_1 | q4_0 | q8_0 | int8 (base weights)"
    )
    parser.add_argument(
        "--backend",
        action="append",
        metavar="KIND=URL",
        help="an inference backend: vllm=URL or openai=URL (or embedded); repeatable, "
        "replaces the config file's [[backends]]",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import ConfigError, config_from_args, fail, server_state
    from ownllm.config import parse_backend_flag

    try:
        config = config_from_args(
            args,
            {
                "server": {"host": args.host, "port": args.port},
                "model": {
                    "model": args.model,
                    "name": args.name,
                    "dtype": args.dtype,
                    "quantization": args.quantization,
                },
            },
            backends=[parse_backend_flag(value) for value in args.backend or ()],
        )
        from ownllm.backends.factory import api_key
        from ownllm.gateway.guard.policy import load_policy

        load_policy(config.guard.policy_file or None)  # a bad policy stops here, before the model
        for backend in config.backends:
            api_key(backend, os.environ)  # an unset key variable stops here too
    except ConfigError as e:
        return fail(str(e))
    configure_logging(config.server.log_level)
    from ownllm.api.app import create_app

    problem = _auth_problem(config)
    if problem:
        return fail(problem)
    state = server_state(config)
    try:
        app = create_app(state)
    except ConfigError as e:  # the guard's classifier cannot be loaded
        return fail(str(e))
    return 0 if _serve(app, state) else STARTUP_FAILURE


def configure_logging(level: str) -> None:
    """One format for every line (ours, uvicorn's, the libraries'); above DEBUG, uvicorn's
    lifecycle INFO lines and httpx's line per request are dropped (and alembic's, by
    `ownllm.store.db`)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "debug":
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        # a line per call to a backend server (requests, health checks, metric scrapes)
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _serve(app, state) -> bool:
    """Run uvicorn until it stops; whether it started. The address is logged once the
    socket accepts connections (uvicorn binds after the app's startup)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                log_listening(state, app.state.gateway.auth)

    cfg = state.config.server
    server = Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_config=None,  # uvicorn's lines go through ours: one format, one level
            timeout_graceful_shutdown=5,
            timeout_keep_alive=cfg.keep_alive_s,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run()
    return server.started


def log_listening(state, auth) -> None:
    """The address and who may call it (`auth`: the app's Authenticator), once the socket
    accepts connections."""
    host, port = state.config.server.host, state.config.server.port
    address = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d, auth: %s", address, port, auth_mode(state, auth))


def auth_mode(state, auth) -> str:
    """Open development mode (loopback, no key at all), or which keys are accepted."""
    from ownllm.gateway.keys import list_keys

    if auth.is_open():
        return "open (loopback, no API keys)"
    num_active = len(list_keys(state.db, include_revoked=False))
    accepted = [f"{num_active} active API key{'' if num_active == 1 else 's'}"]
    if state.config.auth.admin_key:
        accepted.append("the admin key")
    return "keys (" + ", ".join(accepted) + ")"


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
