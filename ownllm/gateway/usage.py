"""The usage ledger: one row per request in the `usage` table, and its aggregation.

Rows are queued and written by one background thread in batches (one bulk
INSERT every `_BATCH_WAIT_S`), so a request never waits on the database for
its own ledger row; `flush()` returns once everything queued is on disk, and
`close()` (at server shutdown) flushes. A row is queued for every request the gateway saw —
ok, error (including 429s), cancelled, disconnected — so the ledger also
answers "who was refused". A crash loses at most the rows of the last batch
(≤ `_BATCH_WAIT_S`); a database outage is retried, then logged with the
number of rows lost.

`summarize()` is the one aggregation the CLI (`ownllm usage`) and the HTTP
route (`GET /v1/usage`) share: group by day, model, key, tenant, status or
endpoint (chat.completions, completions, embeddings), filtered by tenant and
time.

Work that is not a request has rows too, with their own measure and no
prompt or completion tokens: a finished fine-tuning job (`fine_tuning.jobs`,
`trained_tokens` over every epoch, written by `ownllm.tuning.jobs` with its
final status) and an adapter export (`adapters.export`, `bytes` sent). They
count as requests, and stay out of the mean latency and time to first token.

Left out: cost per row (computed in `ownllm.gateway.cost` from a price
table, so a price change re-prices history), retention.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ownllm.usage")

STATUSES = ("ok", "error", "cancelled", "disconnected")
GROUPS = ("day", "model", "key", "tenant", "status", "endpoint")
NOT_REQUESTS = ("fine_tuning.jobs", "adapters.export")  # endpoints of rows for other work
_BATCH_MAX = 500
_BATCH_WAIT_S = 0.1
_RETRIES = 5


@dataclass
class UsageRow:
    """One request as the ledger stores it."""

    request_id: str
    tenant_id: str
    key_id: str | None
    endpoint: str
    model: str
    status: str  # ok | error | cancelled | disconnected
    adapter_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    trained_tokens: int = 0  # a fine-tuning job's row
    bytes: int = 0  # an export's row
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    http_status: int = 200
    error_code: str | None = None
    batch_id: str | None = None  # a batch line's row: its batch
    backend: str | None = None  # behind a router: the replica that served it
    remote: bool = False  # served by a remote = true backend (the hybrid route)
    remote_cost_usd: float | None = None  # its price from the price table (None: no entry)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"usage status {self.status!r} not in {STATUSES}")


@dataclass(frozen=True)
class BusySample:
    """Engine busy seconds a replica added since its previous sample (for the cost account)."""

    replica: str
    busy_seconds: float
    at: float = field(default_factory=time.time)


def day_of(wall: float) -> str:
    from ownllm.store.schema import usage_day

    return usage_day(wall)


class UsageLedger:
    """Queue rows with `record`; one writer thread per ledger inserts them in batches.

    `record` only appends to a deque (no lock handoff, no thread wake-up), and the writer
    wakes every `_BATCH_WAIT_S` to write what piled up with one bulk INSERT: waking a
    thread per request would hand it the GIL in the middle of other requests.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self._pending: deque = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._num_recorded = 0
        self._num_done = 0  # written or lost
        self.num_lost = 0

    def record(self, row: UsageRow | BusySample | Callable[[Any], None]) -> None:
        """Queue one row, busy sample, or write `fn(session)` for the next batch's transaction
        (never blocks, never raises for database trouble)."""
        if self.db is None:
            return
        if self._thread is None:
            self._ensure_writer()
        with self._count_lock:
            self._num_recorded += 1
            self._pending.append(row)

    def write_now(self, items: list[Any]) -> None:
        """Insert rows (and add busy samples) in one transaction (the writer thread's job)."""
        from sqlalchemy import insert

        from ownllm.store.schema import UsageRecord

        # vars(), not asdict(): the fields are scalars, and asdict's deep copy costs 10x
        rows = [{**vars(r), "day": day_of(r.created_at)} for r in items if isinstance(r, UsageRow)]
        with self.db.write() as session:
            if rows:
                session.execute(insert(UsageRecord), rows)
            for item in items:
                if isinstance(item, BusySample):
                    self._add_busy(session, item)
                elif callable(item):  # e.g. a budget settlement from the limiter
                    item(session)

    def _add_busy(self, session: Any, sample: BusySample) -> None:
        from sqlalchemy import update

        from ownllm.gateway.budget import insert_missing
        from ownllm.store.schema import EngineTime as E

        day = day_of(sample.at)
        insert_missing(
            self.db,
            session,
            E,
            replica=sample.replica,
            day=day,
            busy_seconds=0.0,
            first_at=sample.at,
            last_at=sample.at,
        )
        session.execute(
            update(E)
            .where(E.replica == sample.replica, E.day == day)
            .values(busy_seconds=E.busy_seconds + sample.busy_seconds, last_at=sample.at)
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything recorded so far is written (or dropped after retries)."""
        target = self._num_recorded
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._num_done < target and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return self._num_done >= target

    def close(self) -> None:
        self.flush()
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _ensure_writer(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(
                    target=self._run, name="ownllm-usage-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(_BATCH_WAIT_S)
            self._wake.clear()
            while self._pending:
                batch = []
                while self._pending and len(batch) < _BATCH_MAX:
                    batch.append(self._pending.popleft())
                self._write_with_retries(batch)
                self._num_done += len(batch)  # only this thread writes it
            if self._stop:
                return

    def _write_with_retries(self, batch: list[Any]) -> None:
        for attempt in range(_RETRIES):
            try:
                self.write_now(batch)
                return
            except Exception:  # the database is down or locked: retry, then report
                if attempt == _RETRIES - 1:
                    self.num_lost += len(batch)
                    log.exception("usage ledger: %d rows lost after %d tries", len(batch), _RETRIES)
                    return
                time.sleep(0.1 * 2**attempt)


# -- aggregation -----------------------------------------------------------------------

_SINCE_RE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """`7d`, `24h`, `30m`, `2w`, a date `2026-11-01` (UTC) or Unix seconds → Unix seconds."""
    if value is None or value == "":
        return None
    from ownllm.errors import InvalidRequestError

    now = time.time() if now is None else now
    text = str(value).strip()
    match = _SINCE_RE.match(text)
    if match:
        return now - int(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        import calendar

        return float(calendar.timegm(time.strptime(text[:10], "%Y-%m-%d")))
    except ValueError:
        raise InvalidRequestError(
            f"Invalid since {value!r}: use 7d, 24h, 30m, 2w, a date YYYY-MM-DD or Unix seconds.",
            param="since",
        ) from None


def summarize(
    db: Any,
    *,
    by: str = "day",
    tenant_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[dict[str, Any]]:
    """Totals per group: requests, ok/error/cancelled/disconnected counts, tokens, trained
    tokens, bytes, and latency (of requests: not of jobs and exports)."""
    from sqlalchemy import case, func, select

    from ownllm.errors import InvalidRequestError
    from ownllm.store.schema import UsageRecord as U

    if by not in GROUPS:
        raise InvalidRequestError(f"Invalid by {by!r}: one of {', '.join(GROUPS)}.", param="by")
    column = {
        "day": U.day,
        "model": U.model,
        "key": U.key_id,
        "tenant": U.tenant_id,
        "status": U.status,
        "endpoint": U.endpoint,
    }[by]
    status_counts = [
        func.sum(case((U.status == status, 1), else_=0)).label(status) for status in STATUSES
    ]
    is_request = U.endpoint.not_in(NOT_REQUESTS)
    query = select(
        column.label("group"),
        func.count().label("requests"),
        *status_counts,
        func.coalesce(func.sum(U.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(U.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(U.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(U.trained_tokens), 0).label("trained_tokens"),
        func.coalesce(func.sum(U.bytes), 0).label("bytes"),
        func.avg(case((is_request, U.latency_ms))).label("mean_latency_ms"),
        func.avg(case((is_request, U.ttft_ms))).label("mean_ttft_ms"),
        func.min(U.created_at).label("first_at"),
        func.max(U.created_at).label("last_at"),
    ).group_by(column)
    if tenant_id is not None:
        query = query.where(U.tenant_id == tenant_id)
    if since is not None:
        query = query.where(U.created_at >= since)
    if until is not None:
        query = query.where(U.created_at < until)
    with db.session() as session:
        rows = session.execute(query.order_by(column)).mappings().all()
    out = []
    for r in rows:
        item = {by: r["group"], "requests": int(r["requests"])}
        item.update({s: int(r[s] or 0) for s in STATUSES})
        prompt, completion = int(r["prompt_tokens"]), int(r["completion_tokens"])
        item.update(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=int(r["cached_tokens"]),
            total_tokens=prompt + completion,
            trained_tokens=int(r["trained_tokens"]),
            bytes=int(r["bytes"]),
            mean_latency_ms=None  # a group of jobs and exports only
            if r["mean_latency_ms"] is None
            else round(float(r["mean_latency_ms"]), 2),
            mean_ttft_ms=None if r["mean_ttft_ms"] is None else round(float(r["mean_ttft_ms"]), 2),
            first_at=float(r["first_at"]),
            last_at=float(r["last_at"]),
        )
        out.append(item)
    return out
