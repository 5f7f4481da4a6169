"""`ownllm chat`: talk to a running ownllm server from the terminal, tokens as they come.

Interactive by default (history kept for the session, `/model NAME`, `/reset`, `/help`,
`/exit`; Ctrl-C stops the answer being generated and returns to the prompt; Ctrl-D
quits). `-p "question"` asks once and exits. Lines piped on stdin are read as turns and
commands, so the chat can be scripted.

It is a plain HTTP client (standard library only) of /v1/chat/completions with
`stream: true`: it runs anywhere the server is reachable, and closing the connection on
Ctrl-C makes the server abort the generation and free its slot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

HELP = """commands:
  /model NAME   switch model (base model, ft: model or adapter name)
  /models       list the models you can use
  /reset        forget the conversation
  /help         this help
  /exit         quit (or Ctrl-D)
Ctrl-C stops the answer being generated."""


class ChatError(Exception):
    """A one-line error for the user (server unreachable, model unknown, ...)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="model to chat with (default: the server's base)")
    parser.add_argument("-p", "--prompt", help="ask one question, print the answer, exit")
    parser.add_argument("--system", "-s", help="system message")
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OWNLLM_BASE_URL", "http://127.0.0.1:8000/v1"),
        help="server API URL (env OWNLLM_BASE_URL; default http://127.0.0.1:8000/v1)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OWNLLM_API_KEY", ""),
        help="API key (env OWNLLM_API_KEY; not needed in open development mode)",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature (0-2)")
    parser.add_argument("--max-tokens", type=int, help="longest answer in tokens")
    parser.add_argument("--seed", type=int, help="sampling seed (repeatable answers)")


class Client:
    """The few calls `ownllm chat` makes, over urllib."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 600) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _open(self, method: str, path: str, body: dict | None = None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise ChatError(_error_message(e.read(), e.code)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ChatError(
                f"cannot reach ownllm at {self.base_url} ({reason}); is `ownllm serve` running?"
            ) from None

    def get(self, path: str) -> dict:
        with self._open("GET", path) as response:
            return json.loads(response.read())

    def stream_chat(self, body: dict) -> Iterator[str]:
        """Text pieces of the answer; closing the generator closes the connection."""
        response = self._open("POST", "/chat/completions", {**body, "stream": True})
        try:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ChatError(_error_message(json.dumps(event).encode(), 0))
                for choice in event.get("choices", ()):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield text
        finally:
            response.close()


def _error_message(body: bytes, status: int) -> str:
    try:
        error = json.loads(body)["error"]
        return error["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"


class ChatSession:
    """One conversation: the model, the history and how to ask."""

    def __init__(self, client: Client, model: str, args: argparse.Namespace) -> None:
        self.client = client
        self.model = model
        self.system = args.system
        self.options = {
            key: value
            for key, value in (
                ("temperature", args.temperature),
                ("max_tokens", args.max_tokens),
                ("seed", args.seed),
            )
            if value is not None
        }
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, question: str, out: TextIO) -> str:
        """Stream the answer to `out`; Ctrl-C stops it (the partial answer is kept)."""
        self.messages.append({"role": "user", "content": question})
        body = {"model": self.model, "messages": self.messages, **self.options}
        pieces: list[str] = []
        stream = self.client.stream_chat(body)
        try:
            for text in stream:
                pieces.append(text)
                out.write(text)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except ChatError:
            self.messages.pop()
            raise
        finally:
            stream.close()
            out.write("\n")
            out.flush()
        answer = "".join(pieces)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def switch(self, name: str) -> None:
        self.client.get(f"/models/{name}")  # ChatError (404) when it does not exist
        self.model = name


def _first_model(client: Client) -> str:
    models = client.get("/models").get("data", [])
    if not models:
        raise ChatError("the server lists no models")
    return models[0]["id"]


def _command(session: ChatSession, line: str, out: TextIO) -> bool:
    """Run a /command; False when it asks to quit."""
    name, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    if name in ("exit", "quit", "bye"):
        return False
    if name == "reset":
        session.reset()
        out.write("(conversation cleared)\n")
    elif name == "model" and arg:
        session.switch(arg)
        out.write(f"(now chatting with {arg})\n")
    elif name == "model":
        out.write(f"(chatting with {session.model})\n")
    elif name == "models":
        for model in session.client.get("/models").get("data", []):
            out.write(f"{model['id']}\n")
    else:
        out.write(HELP + "\n")
    return True


def _read_line(prompt: str, is_tty: bool) -> str | None:
    try:
        if is_tty:
            return input(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


def interactive(session: ChatSession, out: TextIO) -> int:
    is_tty = sys.stdin.isatty()
    if is_tty:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        out.write(f"Chatting with {session.model}. /help for commands, Ctrl-D to quit.\n")
    while True:
        try:
            line = _read_line(">>> ", is_tty)
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /exit to quit)\n")
            continue
        if line is None:
            if is_tty:
                out.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not _command(session, line, out):
                    return 0
            else:
                session.ask(line, out)
        except ChatError as e:
            print(f"ownllm: error: {e}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import fail

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops an answer, also when started with SIGINT ignored (as a script's
        # background job is): Python then installs no KeyboardInterrupt handler of its own.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    client = Client(args.base_url, args.api_key)
    out = sys.stdout
    try:
        model = args.model or _first_model(client)
        session = ChatSession(client, model, args)
        if args.prompt is not None:
            session.ask(args.prompt, out)
            return 0
    except ChatError as e:
        return fail(str(e), code=1)
    return interactive(session, out)
