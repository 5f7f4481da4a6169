"""How chat and legacy completions are written on the wire, streamed or whole.

The pipeline (`ownllm.api.inference`) is the same for both endpoints; only the JSON
differs, and it lives here: `ChatFormat` writes `chat.completion` / `chat.completion.chunk`
objects, `CompletionFormat` writes `text_completion` objects, both exactly as OpenAI does
(first chat chunk of each choice carries the role, `finish_reason` rides on the last
content chunk, the usage chunk has empty `choices`, `usage` is null on the other chunks
when usage was asked for).

With tools, `ChatFormat` reads each choice's text as content and tool calls
(`ownllm.api.tools.ToolAnswer`) and streams the calls as OpenAI does: the first delta of a
call carries its `index`, `id`, `type` and `function.name` (with empty `arguments`), the
next ones `function.arguments` in fragments, and the last chunk `finish_reason:
"tool_calls"` with an empty delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ownllm.api.tools import ToolAnswer
from ownllm.backends.base import TokenLogprob
from ownllm.models.tool_format import CallEvent, CallSyntax


@dataclass
class ChoiceText:
    """One choice being generated: what the client has been sent so far."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0


def usage_body(num_prompt: int, num_output: int, num_cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_output,
        "total_tokens": num_prompt + num_output,
        "prompt_tokens_details": {"cached_tokens": num_cached},
    }


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


class Format:
    object_name = ""
    chunk_object = ""

    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        fingerprint: str,
        *,
        has_logprobs: bool = False,
        include_usage: bool = False,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.created = created
        self.fingerprint = fingerprint
        self.has_logprobs = has_logprobs
        self.include_usage = include_usage
        self.route: dict[str, Any] | None = None  # a router alias's pick, as `ownllm_route`

    def _envelope(self, object_name: str, choices: list[dict]) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            **({"ownllm_route": self.route} if self.route is not None else {}),
        }

    def chunk(self, choices: list[dict]) -> dict[str, Any]:
        body = self._envelope(self.chunk_object, choices)
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        body = self._envelope(self.chunk_object, [])
        body["usage"] = usage
        return body

    def response(self, choices: list[ChoiceText], usage: dict[str, Any]) -> dict[str, Any]:
        body = self._envelope(self.object_name, [self.choice(c) for c in choices])
        body["usage"] = usage
        return body

    # per endpoint
    def start_chunks(self, indices: list[int]) -> list[dict[str, Any]]:
        return []

    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def delta_chunks(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> list[dict[str, Any]]:
        """The chunks of one delta (one, unless an endpoint splits it)."""
        return [self.delta_chunk(index, text, logprobs, finish)]

    def choice(self, choice: ChoiceText) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(Format):
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, *args: Any, tool_syntax: CallSyntax | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tool_syntax = tool_syntax  # None: the request has no tools
        self._answers: dict[int, ToolAnswer] = {}  # streamed choices read as calls

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if not self.has_logprobs:
            return None
        return {
            "content": [
                {
                    "token": lp.token,
                    "logprob": lp.logprob,
                    "bytes": list(lp.bytes) or _utf8(lp.token),
                    "top_logprobs": [
                        {"token": tok, "logprob": val, "bytes": _utf8(tok)}
                        for _, tok, val in lp.top
                    ],
                }
                for lp in logprobs or ()
            ],
            "refusal": None,  # required by OpenAI's spec, as the message's `refusal` is
        }

    def start_chunks(self, indices: list[int]) -> list[dict[str, Any]]:
        return [
            self.chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in indices
        ]

    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> dict[str, Any]:
        delta = {"content": text} if text or finish is None else {}
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": self._logprobs(logprobs) if logprobs else None,
            "finish_reason": finish,
        }
        return self.chunk([choice])

    def delta_chunks(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> list[dict[str, Any]]:
        if self.tool_syntax is None:
            return [self.delta_chunk(index, text, logprobs, finish)]
        answer = self._answers.setdefault(index, ToolAnswer(self.tool_syntax))
        events = answer.feed(text) if text else []
        if finish is not None:
            events += answer.finish()
        deltas = [self._tool_delta(answer, e) for e in events]
        if logprobs and not deltas:
            deltas.append({})
        chunks = []
        for k, delta in enumerate(deltas):
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            if k == 0 and logprobs:
                choice["logprobs"] = self._logprobs(logprobs)
            chunks.append(self.chunk([choice]))
        if finish is not None:
            reason = "tool_calls" if answer.ids and finish == "stop" else finish
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
            chunks.append(self.chunk([last]))
        return chunks

    @staticmethod
    def _tool_delta(answer: ToolAnswer, event: CallEvent) -> dict[str, Any]:
        if event.kind == "content":
            return {"content": event.text}
        if event.kind == "open":
            function = {"name": event.text, "arguments": ""}
            call = {"index": event.index, "id": answer.ids[event.index], "type": "function"}
            return {"tool_calls": [{**call, "function": function}]}
        return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}

    def choice(self, choice: ChoiceText) -> dict[str, Any]:
        message = {"role": "assistant", "content": choice.text, "refusal": None}
        finish = choice.finish_reason
        if self.tool_syntax is not None:
            answer = ToolAnswer(self.tool_syntax)
            answer.feed(choice.text)
            answer.finish()
            if answer.ids:
                message["content"] = answer.content.strip() or None
                message["tool_calls"] = answer.calls
                finish = "tool_calls" if finish == "stop" else finish
        return {
            "index": choice.index,
            "message": message,
            "logprobs": self._logprobs(choice.logprobs),
            "finish_reason": finish,
        }


class CompletionFormat(Format):
    object_name = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, *args: Any, echo_prompts: list[str] | None = None, n: int = 1, **kw: Any):
        super().__init__(*args, **kw)
        self.echo_prompts = echo_prompts  # echo=True: each choice starts with its prompt
        self.n = n
        self._offsets: dict[int, int] = {}  # index -> text offset of the next token

    def _echo(self, index: int) -> str:
        return self.echo_prompts[index // self.n] if self.echo_prompts else ""

    def _logprobs(self, index: int, logprobs: list[TokenLogprob] | None) -> dict | None:
        if not self.has_logprobs:
            return None
        offset = self._offsets.get(index, len(self._echo(index)))
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        out["text_offset"] = []
        for lp in logprobs or ():
            out["tokens"].append(lp.token)
            out["token_logprobs"].append(lp.logprob)
            out["top_logprobs"].append({tok: val for _, tok, val in lp.top})
            out["text_offset"].append(offset)
            offset += len(lp.token)
        self._offsets[index] = offset
        return out

    def start_chunks(self, indices: list[int]) -> list[dict[str, Any]]:
        if not self.echo_prompts:
            return []
        return [
            self.chunk(
                [{"index": i, "text": self._echo(i), "logprobs": None, "finish_reason": None}]
            )
            for i in indices
        ]

    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "text": text,
            "logprobs": self._logprobs(index, logprobs) if logprobs else None,
            "finish_reason": finish,
        }
        return self.chunk([choice])

    def choice(self, choice: ChoiceText) -> dict[str, Any]:
        return {
            "index": choice.index,
            "text": self._echo(choice.index) + choice.text,
            "logprobs": self._logprobs(choice.index, choice.logprobs),
            "finish_reason": choice.finish_reason,
        }
