"""`ownllm batch submit|list|show|cancel`: the Batch API over HTTP, like the openai client.

    ownllm batch submit requests.jsonl --endpoint /v1/chat/completions --wait

`submit` uploads the file (purpose `batch`) and creates the batch; with `--wait` it shows
progress until the batch ends, then writes the output file (`--output`, default
`<file>.output.jsonl`) and the error file, if any (`<file>.errors.jsonl`), and exits 0 only
when the batch completed. The server is `--base-url` (env OPENAI_BASE_URL), the key
`--api-key` (env OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ownllm.cli.jobs import ApiError, Client, add_client_arguments

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ENDED = ("completed", "failed", "expired", "cancelled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("submit", help="upload a JSONL file of requests and start a batch")
    p.add_argument("file", type=Path, help="JSONL, one {custom_id, method, url, body} a line")
    p.add_argument("--endpoint", required=True, choices=ENDPOINTS)
    p.add_argument("--window", default="24h", help="completion window (OpenAI's: 24h)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="show progress and write the results")
    p.add_argument("--output", type=Path, help="where --wait writes the output file")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between progress checks")
    add_client_arguments(p)
    for action, help_ in (("list", "recent batches"), ("show", "one batch"),
                          ("cancel", "cancel a batch")):  # fmt: skip
        p = sub.add_parser(action, help=help_)
        if action == "list":
            p.add_argument("--limit", type=int, default=20)
        else:
            p.add_argument("batch_id")
        p.add_argument("--json", action="store_true", help="print the raw JSON")
        add_client_arguments(p)


def progress(batch: dict) -> str:
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    text = f"{batch['id']}  {batch['status']:<11} {done}/{counts['total']}"
    if counts["failed"]:
        text += f" ({counts['failed']} failed)"
    return text


def describe(batch: dict) -> str:
    lines = [progress(batch), f"  endpoint:    {batch['endpoint']}",
             f"  input file:  {batch['input_file_id']}",
             f"  output file: {batch.get('output_file_id') or '-'}",
             f"  error file:  {batch.get('error_file_id') or '-'}"]  # fmt: skip
    for e in (batch.get("errors") or {}).get("data", []):
        where = f"line {e['line']}" if e.get("line") else "file"
        lines.append(f"  error: {where}: {e['code']}: {e['message']}")
    return "\n".join(lines)


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(f"--metadata {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out or None


def submit(client: Client, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise ApiError(f"{args.file}: no such file")
    uploaded = client.upload(args.file, purpose="batch")
    body = {"input_file_id": uploaded["id"], "endpoint": args.endpoint,
            "completion_window": args.window, "metadata": _metadata(args.metadata)}  # fmt: skip
    batch = client.request("POST", "/batches", body)
    print(progress(batch), flush=True)
    if not args.wait:
        return 0
    shown = progress(batch)
    while batch["status"] not in ENDED:
        time.sleep(args.poll)
        batch = client.request("GET", f"/batches/{batch['id']}")
        if progress(batch) != shown:
            shown = progress(batch)
            print(shown, flush=True)
    output = args.output or args.file.with_suffix(".output.jsonl")
    for key, path in (("output_file_id", output),
                      ("error_file_id", args.file.with_suffix(".errors.jsonl"))):  # fmt: skip
        if batch.get(key):
            path.write_bytes(client.content(f"/files/{batch[key]}/content"))
            print(f"wrote {path}")
    if batch["status"] != "completed":
        print(describe(batch), file=sys.stderr)
    return 0 if batch["status"] == "completed" else 1


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import fail

    client = Client(args.base_url, args.api_key)
    try:
        if args.action == "submit":
            return submit(client, args)
        if args.action == "list":
            out = client.request("GET", f"/batches?limit={args.limit}")
            text = "\n".join(progress(b) for b in out["data"]) or "no batches"
        elif args.action == "show":
            out = client.request("GET", f"/batches/{args.batch_id}")
            text = describe(out)
        else:
            out = client.request("POST", f"/batches/{args.batch_id}/cancel")
            text = progress(out)
    except ApiError as e:
        return fail(str(e), code=1)
    print(json.dumps(out, indent=2) if args.json else text)
    return 0
