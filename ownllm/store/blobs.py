"""The data directory: where files, adapters, checkpoints and the model cache live.

Layout under `OWNLLM_HOME` (default `~/.ownllm`):
    ownllm.db            SQLite database (when no OWNLLM_DATABASE_URL)
    files/<file-id>      uploaded files
    adapters/<id>/       registered adapters (PEFT format, immutable)
    checkpoints/<job>/   training checkpoints
    models/<name>-<sha>/ dequantised base-model caches
    tmp/                 partial writes, renamed into place when complete
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def ensure(self) -> DataDir:
        for path in (self.root, self.files, self.adapters, self.checkpoints, self.models, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def resolve(self, relative: str) -> Path:
        return self.root / relative

    @contextmanager
    def atomic_dir(self, final: Path) -> Iterator[Path]:
        """Yield a temporary directory that becomes `final` only if the block succeeds."""
        tmp = self.tmp / f"{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            for file in tmp.rglob("*"):
                if file.is_file():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
