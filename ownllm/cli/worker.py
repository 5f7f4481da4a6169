"""`ownllm worker`: claim queued fine-tuning jobs from the database and train them, and
queued vector store files and ingest them (in a thread of its own, so a file never
waits for a training job to end).

Run any number of these against one database (PostgreSQL for several hosts);
a job or file is never taken by two. SIGTERM/Ctrl-C stops between micro-batches and
requeues the job, which a worker resumes from its last epoch checkpoint; a file being
ingested is handed back after its current batch of chunks, and resumed after them.

`--nproc N` trains each job on N torch.distributed ranks (gloo, one process each) of
this machine: the job is claimed once, rank 0 writes its checkpoints, events and adapter,
and losing any rank requeues the job from its last checkpoint (see ownllm.tuning.ranks).
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
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train each job on N data-parallel ranks (default 1)")  # fmt: skip
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ownllm.cli.common import ConfigError, config_from_args, fail

    if args.nproc < 1:
        return fail("--nproc must be at least 1")
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
    worker = Worker(db, data_dir, base, config.tuning, nproc=args.nproc)
    stop = threading.Event()
    ingester = _ingester(db, data_dir, config, stop)

    def on_signal(_signum, _frame) -> None:
        stop.set()
        worker.stop_current()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.once:
            ingester.run_once()
            worker.run_once()
        else:
            ingesting = threading.Thread(target=ingester.run_forever, name="ingest", daemon=True)
            ingesting.start()
            worker.run_forever(stop)
            ingesting.join()
    finally:
        db.close()
    return 0


def _ingester(db, data_dir, config, stop):
    from ownllm.vectors.ingest import Ingester, shipped_embedder

    tuning = config.tuning
    return Ingester(
        db,
        data_dir,
        shipped_embedder,
        heartbeat_timeout_s=tuning.heartbeat_timeout_s,
        max_attempts=tuning.max_attempts,
        poll_interval_s=tuning.poll_interval_s,
        stop=stop,
    )
