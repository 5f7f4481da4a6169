"""Object ids: `prefix-` + 24 hex digits, the creation time (ns) then 32 random bits.

Every id the project makes (`chatcmpl-…`, `file-…`, `ftjob-…`, `adapter-…`, `key-…`)
comes from `new_id`, so ids of one kind sort in creation order and can serve
as list cursors. Left out: ids that must be unguessable (API keys are secrets,
made in `ownllm.gateway.auth`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time


def new_id(prefix: str, sep: str = "-") -> str:
    """`prefix-` + creation time (ns, 16 hex digits) + 8 random hex digits. `sep` is "_"
    where OpenAI's ids of the kind have one (`batch_…`, `batch_req_…`)."""
    return f"{prefix}{sep}{time.time_ns():016x}{secrets.token_hex(4)}"


def worker_id() -> str:
    """`host:pid:random`: names a worker process in the leases and heartbeats it writes, so an
    operator can tell which machine and process holds a job, a batch line or a run."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
