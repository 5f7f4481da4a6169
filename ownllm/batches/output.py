"""A batch's output and error files, assembled from its answered lines at the end.

Both are JSONL in OpenAI's output format, in input order:
`{"id": "batch_req_…", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}`. Lines answered 2xx go to the output file; the rest (an error status, or
`error.code` `batch_expired` / `worker_lost` with no response) to the error file. Each
file exists only when it has a line; both have purpose `batch_output` and belong to the
batch's tenant, so `GET /v1/files/{id}/content` serves them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ownllm.batches import store
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import Batch, BatchLine
from ownllm.tuning.files import save_bytes

PURPOSE = "batch_output"


def is_success(line: BatchLine) -> bool:
    response = (line.result or {}).get("response")
    return line.status == "done" and response is not None and response["status_code"] < 300


def write_results(db: Database, data_dir: DataDir, batch: Batch) -> dict[str, str | None]:
    """Write the files; {"output_file_id", "error_file_id"} for the batch's row."""
    lines = store.answered_lines(db, batch.id)
    ok = [line for line in lines if is_success(line)]
    failed = [line for line in lines if not is_success(line)]
    return {
        "output_file_id": _save(db, data_dir, batch, ok, "output"),
        "error_file_id": _save(db, data_dir, batch, failed, "error"),
    }


def _save(
    db: Database, data_dir: DataDir, batch: Batch, lines: list[BatchLine], kind: str
) -> str | None:
    if not lines:
        return None
    row = save_bytes(
        db,
        data_dir,
        _jsonl(lines),
        tenant_id=batch.tenant_id,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose=PURPOSE,
    )
    return row.id


def _jsonl(lines: list[BatchLine]) -> Iterator[bytes]:
    for line in lines:
        yield json.dumps(line.result, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
