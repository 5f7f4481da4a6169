"""A real server process for the batch end-to-end test: the app over a ScriptedBackend, on
a loopback port, sharing a data dir (SQLite, files) with the next one.

    python -m tests.e2e.batch_server --data-dir D --port P --tokenizer-dir T --log L

Every generation appends its prompt's text to the file `L`, one line each, before it
answers, so a test reads which lines each process ran. A prompt containing "HOLD" first
creates `D/held`, then waits until `D/release` exists (forever, if the test kills the
process instead): the test sees the server mid-batch as an event, not a time.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvicorn

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.backends.scripted import COUNTING, ScriptedBackend
from ownllm.config import load_config
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database

HOLD = "HOLD"


class HoldingBackend(ScriptedBackend):
    def __init__(self, tokenizer, data_dir: Path, log: Path) -> None:
        super().__init__(COUNTING, tokenizer=tokenizer, model_id="tiny", max_model_len=4096)
        self.data_dir, self.log = data_dir, log

    async def generate(self, request):
        text = self.tokenizer.decode(request.prompt_token_ids)
        with open(self.log, "a") as f:
            f.write(text.replace("\n", " ") + "\n")
        if HOLD in text:
            (self.data_dir / "held").touch()
            while not (self.data_dir / "release").exists():
                await asyncio.sleep(0.02)
        async for delta in super().generate(request):
            yield delta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    config = load_config(
        overrides={"store": {"data_dir": args.data_dir}, "model": {"name": "tiny"}}
    )
    data_dir = DataDir(config.store.home).ensure()
    state = AppState(config=config, data_dir=data_dir, db=Database.open(config.store.url))
    state.tokenizer = Tokenizer.from_dir(args.tokenizer_dir)
    state.backend = HoldingBackend(state.tokenizer, Path(args.data_dir), Path(args.log))
    app = create_app(state, start_engine=False)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
