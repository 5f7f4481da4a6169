"""`python -m bench._fake_vllm --port P [--itl-ms 10]`: a stand-in for a vLLM server that
costs next to no CPU, for measuring what the gateway itself spends (bench/vllm_gateway.py
`--fake-vllm`).

It speaks the parts of vLLM's OpenAI-compatible API that ownllm's vllm backend uses, in
vLLM's wire format: `/health`, `/v1/models`, `/metrics`, `/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`, and `/v1/completions` streamed (chunked transfer encoding, one
`data:` event per token with `token_ids`, then the finish, the usage chunk and `[DONE]`),
`max_tokens` tokens one every `--itl-ms`. Plain asyncio streams, no framework: a request
costs it a few hundred microseconds, so a gateway's CPU time is the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

SERVED = "smollm2-135m-instruct"
MODELS = json.dumps(
    {"object": "list", "data": [{"id": SERVED, "object": "model", "max_model_len": 2048}]}
).encode()
METRICS = (
    b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0.0\n"
    b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0.0\n"
)


def _head(status: str, content_type: str, length: int | None) -> bytes:
    size = (
        f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
    )
    return f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{size}\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _completion(writer: asyncio.StreamWriter, body: dict, itl_s: float) -> None:
    n = int(body.get("max_tokens") or 16)
    model = body.get("model", SERVED)
    prompt = body.get("prompt") or []
    created = int(time.time())
    writer.write(_head("200 OK", "text/event-stream; charset=utf-8", None))
    for i in range(n):
        await asyncio.sleep(itl_s)
        choice = {"index": 0, "text": f" w{i % 50}", "logprobs": None,
                  "finish_reason": "length" if i == n - 1 else None,
                  "token_ids": [1000 + i % 50]}  # fmt: skip
        event = {"id": "cmpl-fake", "object": "text_completion", "created": created,
                 "model": model, "choices": [choice]}  # fmt: skip
        writer.write(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
        await writer.drain()
    usage = {"prompt_tokens": len(prompt), "completion_tokens": n,
             "total_tokens": len(prompt) + n}  # fmt: skip
    tail = {"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage}  # fmt: skip
    writer.write(_chunk(b"data: " + json.dumps(tail).encode() + b"\n\n"))
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, itl_s: float):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            raw = await reader.readexactly(int(headers.get("content-length", 0)))
            if method == "POST" and path == "/v1/completions":
                await _completion(writer, json.loads(raw), itl_s)
                continue
            if path == "/v1/models":
                payload, kind = MODELS, "application/json"
            elif path == "/metrics":
                payload, kind = METRICS, "text/plain; version=0.0.4"
            else:  # /health, LoRA loading and unloading
                payload, kind = b"{}", "application/json"
            writer.write(_head("200 OK", kind, len(payload)) + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _main(port: int, itl_s: float) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, itl_s), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.itl_ms / 1000))


if __name__ == "__main__":
    main()
