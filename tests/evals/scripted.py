"""Scripted models for eval and red-team tests: answers picked from the prompt's text and
the adapter the request runs, so no test depends on what a sampled model would say."""

from __future__ import annotations

from collections.abc import Callable

from ownllm.backends.scripted import Script, reply


def prompt_text(backend, request) -> str:
    return backend.tokenizer.decode(request.prompt_token_ids)


def answering(backend, answer: Callable[[str, tuple[str, ...]], str]) -> None:
    """Make `backend` answer `answer(prompt text, adapter ids)`."""

    def respond(request) -> Script:
        adapters = tuple(a.adapter_id for a in request.adapters)
        return reply(answer(prompt_text(backend, request), adapters) or " ")

    backend.respond = respond
