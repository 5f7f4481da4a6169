"""The data directory: where files, adapters, checkpoints and the model cache live.

Layout under `OWNLLM_HOME` (default `~/.ownllm`):
    ownllm.db            SQLite database (when no OWNLLM_DATABASE_URL)
    files/<file-id>      uploaded files
    adapters/<id>/       registered adapters (PEFT format, immutable)
    checkpoints/<job>/   training checkpoints
    models/<name>-<sha>/ dequantised base-model caches
    tmp/                 partial writes, renamed into place when complete

Private to the user that runs ownllm: it holds the database, uploaded training data
and stored completions. `ensure` creates the directories 0700, takes group and other
access off a root this user owns (older versions made it 0755), and adds 077 to the
process umask, so every file the process writes from then on is 0600.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


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
        _restrict_umask()
        for path in (self.root, self.files, self.adapters, self.checkpoints, self.models, self.tmp):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_private(self.root)
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


def _restrict_umask() -> None:
    """Add 077 to the umask (never loosen it). Set, not read-then-set: `os.umask` has no
    read, and a moment at 0 would let another thread create a world-writable file."""
    old = os.umask(0o077)
    if old & ~0o077:
        os.umask(old | 0o077)


def make_private(path: Path) -> None:
    """Take group and other access off `path` when this user owns it (one log line)."""
    st = path.stat()
    if not hasattr(os, "getuid") or st.st_uid != os.getuid() or not st.st_mode & 0o077:
        return
    mode = stat.S_IMODE(st.st_mode)
    os.chmod(path, mode & 0o700)
    log.info(
        "%s was mode %o, now %o: it holds data only its user may read", path, mode, mode & 0o700
    )
