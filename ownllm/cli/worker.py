"""`ownllm worker`: claim queued fine-tuning jobs from the database and train them.

Run any number of these against one database (PostgreSQL for several hosts);
a job is never taken by two. SIGTERM/Ctrl-C stops between micro-batches and
requeues the job, which a worker resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    parser.add_argument("--model", metavar="PATH|ID", help="base model (default: model.model)")
    parser.add_argument("--name", help="model id the server serves it as")
    parser.add_argument("--base-sha256", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ownllm.cli.common import ConfigError, config_from_args, fail

    try:
        config = config_from_args(args, {"model": {"model": args.model, "name": args.name}})
    except ConfigError as e:
        return fail(str(e))
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ownllm.models import ModelLoadError, prepare_model, resolve_model
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database, DatabaseError
    from ownllm.tuning.worker import BaseModel, Worker

    try:
        data_dir = DataDir(config.store.home).ensure()
        source = resolve_model(config.model.model, config.model.name)
        prepared = prepare_model(source, data_dir.root)
        db = Database.open(config.store.url)
    except (ModelLoadError, DatabaseError) as e:
        return fail(str(e))
    base = BaseModel(prepared.id, prepared.path, args.base_sha256 or prepared.weights_sha256)
    worker = Worker(db, data_dir, base, config.tuning)
    stop = threading.Event()

    def on_signal(_signum, _frame) -> None:
        stop.set()
        worker.stop_current()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.once:
            worker.run_once()
        else:
            worker.run_forever(stop)
    finally:
        db.close()
    return 0
