"""The `openai` backend: any OpenAI-compatible endpoint behind the Backend protocol.

Another ownllm (a CPU-fleet replica), llama.cpp's server, Ollama, a paid API for the
hybrid route. Each request is one streamed HTTP call: a chat call goes to
`/v1/chat/completions` with its messages as the client sent them (after the input
guard), a completions call to `/v1/completions` with its prompt text; a request that has
only token ids (and every request of the `vllm` backend, a subclass) goes to
`/v1/completions` with the ids as the prompt, so the server sees the very prompt ownllm's
chat template made. The server's server-sent events become `Delta`s; its usage chunk
gives the real token counts (a paid API's tokenizer is not ours).

Errors map onto ownllm's: 400/422 from the server is a 400 for the client (its message and
`param` passed on), 404 an unknown model, 429 and 503 `OverloadedError` (503 with the
server's Retry-After), a connection failure or a 5xx before the first token
`BackendUnavailableError` (nothing was generated: a router may retry on another replica),
and a stream that breaks after it began `BackendStreamError`, which the client's stream
ends with. Credentials the server refuses are a 502: the operator's problem, not the
client's.

`max_concurrency` requests run at once; one more is refused with 503 at once (a router
tries another replica; queueing is the server's job). `health()` asks `/health` (vLLM),
`/ready` (ownllm) or `/v1/models` (any other), and `stats()` is the last scrape of the
server's Prometheus `/metrics` (vLLM's `vllm:*` or ownllm's gauges), taken every
`SCRAPE_INTERVAL_S` while the backend runs; without metrics it counts what is in flight.
The streamed calls go through `UpstreamClient` (aiohttp, `backends/upstream.py`); health
checks, scrapes and discovery through httpx.

Left out: adapters on a plain OpenAI endpoint (a 400; dialect `ownllm` sends registry
ids to a replica that shares the registry), tool calls, and prefix-cache isolation on a
replica that has none (vLLM's `cache_salt` is used by the vllm backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from ownllm.backends.base import (
    Delta,
    EngineStats,
    GenerateRequest,
    ModelInfo,
    SamplingParams,
    TokenLogprob,
)
from ownllm.backends.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from ownllm.config import BackendConfig
from ownllm.errors import (
    BackendError,
    BackendStreamError,
    BackendUnavailableError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    OwnLLMError,
)

log = logging.getLogger("ownllm.backends")

SCRAPE_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 5.0
MAX_ERROR_BODY = 1 << 16  # bytes of an error answer read for its message
FINISH_REASONS = ("stop", "length", "content_filter", "abort")

# Prometheus gauge -> EngineStats field, for each kind of server
VLLM_METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:generation_tokens": "tokens_generated",
}
OWNLLM_METRICS = {
    "ownllm_running_requests": "running",
    "ownllm_queue_depth": "waiting",
    "ownllm_engine_waiting_seqs": "waiting_seqs",
    "ownllm_engine_waiting_tokens": "waiting_tokens",
    "ownllm_kv_cache_blocks_used": "kv_blocks_used",
    "ownllm_kv_cache_blocks_total": "kv_blocks_total",
    "ownllm_resident_adapters": "resident_adapters",
    "ownllm_engine_tokens_generated": "tokens_generated",
}


def base_url(url: str) -> str:
    """`http://host:port` from what a user may write (`…/`, `…/v1`, `…/v1/`)."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


@dataclass
class _Choice:
    """What one choice of a streamed answer has produced so far."""

    num_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class _Stream:
    """The state of one streamed answer: its choices and the server's usage chunk."""

    n: int
    num_prompt_tokens: int
    choices: dict[int, _Choice] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    is_started: bool = False  # a delta has gone to the caller
    is_done: bool = False  # `data: [DONE]` arrived

    def choice(self, index: int) -> _Choice:
        if not 0 <= index < self.n:
            raise BackendStreamError(f"the backend sent choice {index} of a request for {self.n}")
        return self.choices.setdefault(index, _Choice())


class OpenAIBackend:
    """A Backend over an OpenAI-compatible HTTP endpoint (see the module docstring)."""

    uses_token_constraints = False  # response_format goes to the server as it is
    health_path = "/v1/models"
    metric_names: dict[str, str] = {}

    def __init__(
        self,
        cfg: BackendConfig,
        *,
        model_info: ModelInfo,
        tokenizer: Any = None,
        api_key: str = "",
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.url = base_url(cfg.url)
        self._model_info = model_info
        self._tokenizer = tokenizer
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None
        self.upstream = UpstreamClient(
            self.url,
            headers=self._headers,
            read_timeout_s=cfg.timeout_s,
            max_connections=cfg.max_concurrency + 4,
        )
        self._scraper: asyncio.Task | None = None
        self._scraped: EngineStats | None = None
        self.in_flight = 0
        self._streams: dict[str, UpstreamResponse] = {}
        if cfg.dialect == "ownllm":
            self.health_path, self.metric_names = "/ready", OWNLLM_METRICS

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = self._new_client()
        await self._discover()
        if self.metric_names and self._scraper is None:
            self._scraper = asyncio.create_task(self._scrape_forever())

    async def shutdown(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
            self._scraper = None
        await self.upstream.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _new_client(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(self.cfg.timeout_s, connect=10.0, pool=10.0)
        limits = httpx.Limits(
            max_connections=self.cfg.max_concurrency + 4, max_keepalive_connections=32
        )
        return httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, limits=limits
        )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # used before start (a test, a CLI call)
            self._client = self._new_client()
        return self._client

    async def _discover(self) -> None:
        """The model's context length from the server's /v1/models (vLLM and ownllm say it),
        unless the config sets it; a server not up yet keeps the served model's."""
        if self.cfg.max_model_len:
            self._model_info = replace(self._model_info, max_model_len=self.cfg.max_model_len)
            return
        try:
            response = await self.client.get("/v1/models", timeout=HEALTH_TIMEOUT_S)
            models = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        wanted = self.upstream_base_model()
        for model in models if isinstance(models, list) else ():
            length = model.get("max_model_len") if isinstance(model, dict) else None
            if model.get("id") == wanted and isinstance(length, int) and length > 0:
                self._model_info = replace(self._model_info, max_model_len=length)

    async def health(self) -> bool:
        """Whether the server answers its health path with 200. The wait is bounded by the
        caller (the router's `health_timeout_s`), not here: a cap of its own would fail a
        busy server sooner than the operator's setting allows."""
        try:
            response = await self.client.get(self.health_path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def stats(self) -> EngineStats:
        if self._scraped is not None:
            return self._scraped
        return EngineStats(running=self.in_flight)

    async def _scrape_forever(self) -> None:
        while True:
            try:
                self._scraped = await self.scrape()
            except (httpx.HTTPError, ValueError) as e:
                log.debug("backend %s: /metrics: %s", self.name, e)
                self._scraped = None
            await asyncio.sleep(SCRAPE_INTERVAL_S)

    async def scrape(self) -> EngineStats:
        """One read of the server's /metrics as EngineStats (gauges summed over labels)."""
        response = await self.client.get("/metrics", timeout=HEALTH_TIMEOUT_S)
        response.raise_for_status()
        return parse_metrics(response.text, self.metric_names)

    # -- adapters ----------------------------------------------------------------------------

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        """The server loads what it serves; an ownllm replica reads the shared registry."""

    async def unload_adapter(self, adapter_id: str) -> None:
        """Nothing was loaded here (an ownllm replica sees the registry row go)."""

    # -- generation --------------------------------------------------------------------------

    def may_leave_premises(self, tenant_id: str, model: str) -> bool:
        return self.cfg.remote

    def upstream_base_model(self) -> str:
        return self.cfg.upstream_model or self._model_info.id

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if request.constraint is not None and request.response_format is None:
            raise InvalidRequestError(  # the tools grammar: only the embedded engine has it
                f"tools (function calling) are not supported by backend {self.name}",
                param="tools",
            )
        if self.in_flight >= self.cfg.max_concurrency:
            raise OverloadedError(
                f"backend {self.name} has {self.in_flight} requests in flight, its "
                f"max_concurrency; retry shortly",
                retry_after=1,
            )
        self.in_flight += 1
        try:
            for attempt in range(2):
                path, body = await self.request_body(request)
                try:
                    async for delta in self._stream(request, path, body):
                        yield delta
                    return
                except ModelNotFoundError:  # before the first token, or not at all
                    if attempt or not self.forget(body["model"]):
                        raise
        finally:
            self.in_flight -= 1

    def forget(self, model: str) -> bool:
        """The server said it does not know `model`: whether it was an adapter this backend
        loaded there (the server restarted and lost it), to load again and retry once."""
        return False

    async def request_body(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body of `request` (chat messages or a prompt)."""
        body: dict[str, Any] = {"model": self.upstream_model(request)}
        if self.cfg.dialect == "ownllm":
            if request.adapters:
                body["adapters"] = [
                    {"id": a.adapter_id, "weight": a.weight} for a in request.adapters
                ]
        elif request.adapters:
            raise InvalidRequestError(
                f"the model {request.model!r} is an adapter, and backend {self.name} serves "
                "no ownllm adapters",
                param="model",
            )
        is_chat = request.messages is not None
        if is_chat:
            body["messages"] = request.messages
        elif request.prompt_text is not None:
            body["prompt"] = request.prompt_text
        else:
            body["prompt"] = request.prompt_token_ids
        body.update(sampling_body(request.sampling, is_chat=is_chat))
        if request.response_format is not None:
            if not is_chat:
                raise InvalidRequestError(
                    f"backend {self.name} takes response_format only on chat completions",
                    param="response_format",
                )
            body["response_format"] = request.response_format
        return ("/v1/chat/completions" if is_chat else "/v1/completions"), body

    def upstream_model(self, request: GenerateRequest) -> str:
        """The model id the endpoint is asked for: a model it serves by name (`models`) as
        the client named it; another (the served base, sent here on overflow or fallback)
        as `upstream_model`, else its first model."""
        if self.cfg.dialect == "ownllm":
            return self.upstream_base_model()
        if request.model in self.cfg.models:
            return request.model
        first = self.cfg.models[0] if self.cfg.models else ""
        return self.cfg.upstream_model or first or request.model or self._model_info.id

    async def abort(self, request_id: str) -> None:
        """Close the request's connection: the server aborts a request whose client left."""
        response = self._streams.pop(request_id, None)
        if response is not None:
            response.close()

    async def _stream(
        self, request: GenerateRequest, path: str, body: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        is_chat = path.endswith("chat/completions")
        stream = _Stream(request.sampling.n, len(request.prompt_token_ids))
        try:
            async with self.upstream.stream(path, body) as response:
                if response.status_code != 200:
                    raise await self.status_error(response, request)
                self._streams[request.request_id] = response
                async for line in response.lines():
                    for delta in self._parse_line(line, stream, is_chat):
                        stream.is_started = True
                        yield delta
                    if stream.is_done:
                        await response.finish()
                        break
        except OwnLLMError:
            raise
        except UpstreamError as e:  # also a connection closed by abort()
            if stream.is_started:
                raise BackendStreamError(
                    f"backend {self.name} broke off the answer: {_describe(e)}"
                ) from None
            raise BackendUnavailableError(
                f"backend {self.name} ({self.url}) could not be reached: {_describe(e)}",
                retry_after=1,
            ) from None
        finally:
            self._streams.pop(request.request_id, None)
        for delta in self._finish(stream):
            yield delta

    def _parse_line(self, line: bytes, stream: _Stream, is_chat: bool) -> list[Delta]:
        if not line.startswith(b"data:"):
            return []  # blank separators, `: keep-alive` comments, `event:` names
        data = line[5:].strip()
        if data == b"[DONE]":
            stream.is_done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendStreamError(
                f"backend {self.name} sent an event that is not JSON"
            ) from None
        if not isinstance(chunk, dict):
            raise BackendStreamError(f"backend {self.name} sent an event that is not an object")
        if "error" in chunk:  # an error event: the server's stream ends here
            raise _stream_error(self.name, chunk["error"], stream.is_started)
        if isinstance(chunk.get("usage"), dict):
            stream.usage = chunk["usage"]
        deltas = []
        for raw in chunk.get("choices") or ():
            deltas.extend(self._choice_delta(raw, stream, is_chat))
        return deltas

    def _choice_delta(self, raw: dict[str, Any], stream: _Stream, is_chat: bool) -> list[Delta]:
        choice = stream.choice(int(raw.get("index", 0)))
        if is_chat:
            text = (raw.get("delta") or {}).get("content") or ""
            logprobs = _chat_logprobs(raw.get("logprobs"), self._tokenizer)
        else:
            text = raw.get("text") or ""
            logprobs = _completion_logprobs(raw.get("logprobs"), self._tokenizer)
        token_ids = [int(t) for t in raw.get("token_ids") or ()]
        if token_ids:
            choice.num_tokens += len(token_ids)
        elif logprobs:
            choice.num_tokens += len(logprobs)
        elif text:
            choice.num_tokens += 1  # a plain server sends about one token an event
        if raw.get("finish_reason"):
            reason = raw["finish_reason"]
            choice.finish_reason = reason if reason in FINISH_REASONS else "stop"
        if not text and not token_ids and not logprobs:
            return []
        return [
            Delta(
                index=int(raw.get("index", 0)),
                text=text,
                token_ids=token_ids,
                logprobs=logprobs,
                num_prompt_tokens=stream.num_prompt_tokens,
                num_output_tokens=choice.num_tokens,
            )
        ]

    def _finish(self, stream: _Stream) -> list[Delta]:
        """The last delta of each choice, with the server's usage where it sent one."""
        unfinished = [i for i in range(stream.n) if stream.choice(i).finish_reason is None]
        if unfinished:
            raise BackendStreamError(
                f"backend {self.name} ended the answer before choice {unfinished[0]} finished"
            )
        counts = [stream.choices[i].num_tokens for i in range(stream.n)]
        num_prompt, num_cached = stream.num_prompt_tokens, 0
        usage = stream.usage or {}
        if isinstance(usage.get("completion_tokens"), int):
            # the server's count is the real one: the difference goes to the longest choice
            longest = max(range(stream.n), key=counts.__getitem__)
            counts[longest] = max(0, counts[longest] + usage["completion_tokens"] - sum(counts))
        if isinstance(usage.get("prompt_tokens"), int):
            num_prompt = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            num_cached = details["cached_tokens"]
        return [
            Delta(
                index=i,
                text="",
                finish_reason=stream.choices[i].finish_reason,
                num_prompt_tokens=num_prompt,
                num_cached_tokens=num_cached,
                num_output_tokens=counts[i],
            )
            for i in range(stream.n)
        ]

    async def status_error(self, response: UpstreamResponse, request: GenerateRequest) -> Exception:
        """The ownllm error for a non-200 answer to `request`."""
        message, param, code = error_fields(await response.read(MAX_ERROR_BODY))
        return map_status(self.name, response.status_code, message, param, code, response.headers)


def sampling_body(sp: SamplingParams, *, is_chat: bool) -> dict[str, Any]:
    """OpenAI's sampling fields, streamed with usage; vLLM's extensions where set."""
    body: dict[str, Any] = {
        "max_tokens": sp.max_tokens,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "n": sp.n,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sp.stop:
        body["stop"] = list(sp.stop)
    if sp.seed is not None:
        body["seed"] = sp.seed
    if sp.presence_penalty:
        body["presence_penalty"] = sp.presence_penalty
    if sp.frequency_penalty:
        body["frequency_penalty"] = sp.frequency_penalty
    if sp.logit_bias:
        body["logit_bias"] = {str(token_id): bias for token_id, bias in sp.logit_bias}
    if sp.logprobs is not None:
        if is_chat:
            body.update(logprobs=True, top_logprobs=sp.logprobs)
        else:
            body["logprobs"] = sp.logprobs
    # not OpenAI's: vLLM, llama.cpp and ownllm take them; a server that does not refuses
    # the request (a clear 400), which is better than dropping them unseen
    if sp.top_k:
        body["top_k"] = sp.top_k
    if sp.min_p:
        body["min_p"] = sp.min_p
    if sp.repetition_penalty != 1.0:
        body["repetition_penalty"] = sp.repetition_penalty
    if sp.ignore_eos:
        body["ignore_eos"] = True
    if sp.stop_token_ids:
        body["stop_token_ids"] = list(sp.stop_token_ids)
    return body


def map_status(
    name: str,
    status: int,
    message: str,
    param: str | None,
    code: str | None,
    headers: Any = None,
) -> OwnLLMError:
    """An error answer of backend `name` as the ownllm error the client should get."""
    message = message or f"backend {name} answered HTTP {status}"
    if status in (400, 413, 422):
        lowered = message.lower()
        if code == "context_length_exceeded" or "context length" in lowered:
            return ContextLengthExceededError(message, param=param or "messages")
        return InvalidRequestError(message, param=param)
    if status == 404:
        return ModelNotFoundError(message, param=param or "model")
    if status in (429, 503):
        return OverloadedError(
            f"backend {name} is busy: {message}", retry_after=_retry_after(headers)
        )
    if status in (401, 403):
        return BackendError(
            f"backend {name} refused ownllm's credentials (HTTP {status}): check its api_key_env"
        )
    if status >= 500:
        return BackendUnavailableError(f"backend {name} failed (HTTP {status}): {message}")
    return BackendError(f"backend {name} answered HTTP {status}: {message}")


def error_fields(raw: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an error body: OpenAI's `{"error": {…}}`, vLLM's older
    `{"object": "error", "message": …}`, FastAPI's `{"detail": …}`, or plain text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:2000], None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return str(body)[:2000], None, None
    message = body.get("message") or body.get("detail") or ""
    param, code = body.get("param"), body.get("code")
    return (
        str(message)[:2000],
        param if isinstance(param, str) else None,
        code if isinstance(code, str) else None,
    )


def _stream_error(name: str, error: Any, is_started: bool) -> OwnLLMError:
    message = error.get("message") if isinstance(error, dict) else str(error)
    if not is_started and isinstance(error, dict) and isinstance(error.get("code"), int):
        return map_status(name, error["code"], str(message), error.get("param"), None)
    return BackendStreamError(f"backend {name} ended the answer with an error: {message}")


def _retry_after(headers: Any) -> float:
    try:
        return max(1.0, float((headers or {}).get("retry-after", 1)))
    except (TypeError, ValueError):
        return 1.0


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


def _token_id(token: str, tokenizer: Any) -> int:
    """vLLM's `token_id:N` form, else the local tokenizer's id, else -1 (a remote model's
    token that ours does not have)."""
    if token.startswith("token_id:"):
        with contextlib.suppress(ValueError):
            return int(token[9:])
    if tokenizer is not None:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    return -1


def _token_text(token: str, tokenizer: Any) -> str:
    if token.startswith("token_id:") and tokenizer is not None:
        with contextlib.suppress(ValueError):
            return tokenizer.decode([int(token[9:])], skip_special_tokens=False)
    return token


def _chat_logprobs(raw: Any, tokenizer: Any) -> list[TokenLogprob] | None:
    """Chat logprobs (`{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`)."""
    if not isinstance(raw, dict) or not raw.get("content"):
        return None
    out = []
    for entry in raw["content"]:
        token = str(entry.get("token", ""))
        top = tuple(
            (_token_id(str(t.get("token", "")), tokenizer),
             _token_text(str(t.get("token", "")), tokenizer), float(t.get("logprob", 0.0)))
            for t in entry.get("top_logprobs") or ()
        )  # fmt: skip
        text = _token_text(token, tokenizer)
        raw_bytes = entry.get("bytes")
        out.append(
            TokenLogprob(
                token_id=_token_id(token, tokenizer),
                token=text,
                logprob=float(entry.get("logprob", 0.0)),
                bytes=tuple(raw_bytes) if isinstance(raw_bytes, list) else tuple(text.encode()),
                top=top,
            )
        )
    return out


def _completion_logprobs(raw: Any, tokenizer: Any) -> list[TokenLogprob] | None:
    """Legacy logprobs (`{"tokens", "token_logprobs", "top_logprobs": [{token: lp}]}`)."""
    if not isinstance(raw, dict) or not raw.get("tokens"):
        return None
    tokens, values = raw["tokens"], raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        top_map = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = tuple(
            (_token_id(t, tokenizer), _token_text(t, tokenizer), float(v))
            for t, v in top_map.items()
        )
        text = _token_text(str(token), tokenizer)
        value = values[i] if i < len(values) and values[i] is not None else 0.0
        out.append(
            TokenLogprob(
                token_id=_token_id(str(token), tokenizer),
                token=text,
                logprob=float(value),
                bytes=tuple(text.encode()),
                top=top,
            )
        )
    return out


def parse_metrics(text: str, names: dict[str, str]) -> EngineStats:
    """EngineStats from Prometheus text: each family in `names` summed over its samples
    (vLLM labels by model and engine); vLLM's KV-cache use as blocks of its cache config."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    kv_usage, kv_blocks = None, 0
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:kv_cache_usage_perc":
            kv_usage = sum(s.value for s in family.samples)
            continue
        if family.name == "vllm:cache_config_info":
            for sample in family.samples:
                with contextlib.suppress(KeyError, ValueError):
                    kv_blocks = max(kv_blocks, int(sample.labels["num_gpu_blocks"]))
            continue
        field_name = names.get(family.name.removesuffix("_total"))  # parsers differ
        if field_name is None:
            continue
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        values[field_name] = values.get(field_name, 0.0) + sum(s.value for s in samples)
    if kv_usage is not None and kv_blocks:
        values["kv_blocks_total"] = kv_blocks
        values["kv_blocks_used"] = round(min(1.0, kv_usage) * kv_blocks)
    return EngineStats(**{k: int(v) for k, v in values.items()})
