"""`ownllm jobs list|show|events|cancel`: fine-tuning jobs over HTTP, like the openai client.

The server is `--base-url` (env OPENAI_BASE_URL, default http://127.0.0.1:8000/v1)
and the key `--api-key` (env OPENAI_API_KEY). `Client` here is also what
`ownllm tune` uses: a few JSON calls on the standard library, no extra package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    pass


class Client:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url, self.api_key = base_url.rstrip("/"), api_key

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise ApiError(f"{e.code}: {message}") from None
        except urllib.error.URLError as e:
            raise ApiError(f"cannot reach {self.base_url}: {e.reason}") from None

    def content(self, path: str) -> bytes:
        """The raw body of a GET (a file's content)."""
        req = urllib.request.Request(self.base_url + path)
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(f"{e.code}: {e.reason}") from None
        except urllib.error.URLError as e:
            raise ApiError(f"cannot reach {self.base_url}: {e.reason}") from None

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict:
        # the file is read whole here; uploads from the CLI are training sets, not archives
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self.request(
            "POST", "/files", raw=body, content_type=f"multipart/form-data; boundary={boundary}"
        )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1",
        help="server URL (env OPENAI_BASE_URL)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="API key (env OPENAI_API_KEY)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    actions = {
        "list": "recent jobs, newest first",
        "show": "one job",
        "events": "a job's events, oldest first",
        "cancel": "cancel a job",
    }
    for action, help_ in actions.items():
        p = sub.add_parser(action, help=help_)
        if action != "list":
            p.add_argument("job_id")
        if action in ("list", "events"):
            p.add_argument("--limit", type=int, default=20 if action == "list" else 100)
        p.add_argument("--json", action="store_true", help="print the raw JSON")
        add_client_arguments(p)


def describe(job: dict) -> str:
    hp = job.get("hyperparameters") or {}
    lines = [
        f"{job['id']}  {job['status']}",
        f"  model:            {job['model']}",
        f"  fine_tuned_model: {job.get('fine_tuned_model') or '-'}",
        f"  training_file:    {job['training_file']}  validation_file: "
        f"{job.get('validation_file') or '-'}",
        "  hyperparameters:  " + ", ".join(f"{k}={v}" for k, v in hp.items()),
        f"  trained_tokens:   {job.get('trained_tokens') or 0}",
    ]
    if job.get("error"):
        e = job["error"]
        lines.append(f"  error:            {e.get('code')} ({e.get('param')}): {e.get('message')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import fail

    client = Client(args.base_url, args.api_key)
    try:
        if args.action == "list":
            out = client.request("GET", f"/fine_tuning/jobs?limit={args.limit}")
            text = (
                "\n".join(
                    f"{j['id']}  {j['status']:<17} {j['model']}  {j.get('fine_tuned_model') or ''}"
                    for j in out["data"]
                )
                or "no jobs"
            )
        elif args.action == "show":
            out = client.request("GET", f"/fine_tuning/jobs/{args.job_id}")
            text = describe(out)
        elif args.action == "events":
            out = client.request(
                "GET", f"/fine_tuning/jobs/{args.job_id}/events?limit={args.limit}"
            )
            text = "\n".join(f"{e['level']:<5} {e['message']}" for e in reversed(out["data"]))
        else:
            out = client.request("POST", f"/fine_tuning/jobs/{args.job_id}/cancel")
            text = f"{out['id']}  {out['status']} (cancel requested)"
    except ApiError as e:
        return fail(str(e), code=1)
    print(json.dumps(out, indent=2) if args.json else text, file=sys.stdout)
    return 0
