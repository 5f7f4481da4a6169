"""`python -m tests.fleet_replica --port P --model-dir DIR --data-dir DIR`: an ownllm API on
loopback over a ScriptedBackend counting "tok0 tok1 …", one token every `--delay-ms`: a
CPU-fleet replica a test can `kill -9` while its streams run (they last as long as their
max_tokens say, whatever the machine's speed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.backends.scripted import counting_backend
from ownllm.config import load_config
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--delay-ms", type=float, default=20.0)
    args = p.parse_args()
    overrides = {"store": {"data_dir": args.data_dir}, "model": {"name": "tiny"}}
    config = load_config(env={}, overrides=overrides)
    tokenizer = Tokenizer.from_dir(args.model_dir)
    data_dir = DataDir(Path(args.data_dir)).ensure()
    db = Database.open(config.store.url)  # its /ready asks the database too
    state = AppState(config, data_dir, db=db, tokenizer=tokenizer)
    state.backend = counting_backend(tokenizer, delay_s=args.delay_ms / 1000)
    app = create_app(state, start_engine=False)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
