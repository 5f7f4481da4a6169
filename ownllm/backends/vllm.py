"""The `vllm` backend: a vLLM OpenAI-compatible server of the same base model, LoRA enabled.

Every prompt goes to `/v1/completions` as token ids (ownllm's chat template, the prompt
the trainer saw), with `return_token_ids` so the deltas carry vLLM's ids, and the
tenant's prefix-cache scope as vLLM's `cache_salt` (a cached prefix is reused only
within one tenant, as in the embedded engine). Sampling, logprobs, n and stop map one to
one; `response_format` becomes vLLM's `structured_outputs` (`json` for a JSON schema,
`json_object` for any JSON). What vLLM cannot express is a 400 naming the parameter.

Adapters: the registry stays the source of truth. The first request that needs an
adapter loads it through vLLM's runtime LoRA API (`/v1/load_lora_adapter`, the server
started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) from its PEFT directory in ownllm's
store, named by its registry id: the gateway has resolved tenant -> id before a request
gets here, so no tenant can name another's adapter on the replica. vLLM applies one LoRA
per request, so a stacked request (or one adapter at a weight other than 1) runs on a
`cat` composition of its adapters (`ownllm.adapters.compose`: exact, rank = the sum),
built once into the data dir's cache and loaded like any adapter. `unload_adapter`
unloads the adapter and every composition made from it. A replica that restarted has
forgotten its adapters: its 404 reloads the adapter and the request is sent once more.

With `command`, `VllmProcess` starts the server as a child process (its output logged
to a file in the data dir), waits for `/health` within `start_timeout_s`, and stops it
(its whole process group) at shutdown.

Left out: vLLM's filesystem LoRA resolver (runtime loading needs no shared disk layout)
and a bound on adapters registered on the replica (vLLM keeps `max_cpu_loras` of them in
memory and reads the others from their path again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from ownllm.backends.base import AdapterWeight, EngineStats, GenerateRequest, ModelInfo
from ownllm.backends.openai_compat import (
    HEALTH_TIMEOUT_S,
    VLLM_METRICS,
    OpenAIBackend,
    base_url,
    error_fields,
    map_status,
    sampling_body,
)
from ownllm.config import BackendConfig
from ownllm.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)

log = logging.getLogger("ownllm.backends")

STOP_TIMEOUT_S = 30.0
POLL_S = 0.5
# (adapter paths with their weights, output directory) -> the composed adapter's directory
Composer = Callable[[Sequence[tuple[str, float]], Path], Path]
Resolver = Callable[[str], "str | None"]


def lora_name(adapters: Sequence[AdapterWeight]) -> str | None:
    """The LoRA a request runs with on a vLLM replica: None for the base model, the
    adapter's registry id for one adapter at weight 1, else its `cat` composition's name
    (the same for the same adapters and weights, in any gateway)."""
    if not adapters:
        return None
    if len(adapters) == 1 and adapters[0].weight == 1.0:
        return adapters[0].adapter_id
    key = json.dumps([[a.adapter_id, a.weight] for a in adapters])
    return "cat-" + hashlib.sha256(key.encode()).hexdigest()[:24]


class VLLMBackend(OpenAIBackend):
    """A Backend over a vLLM server (see the module docstring)."""

    health_path = "/health"
    metric_names = VLLM_METRICS

    def __init__(
        self,
        cfg: BackendConfig,
        *,
        model_info: ModelInfo,
        tokenizer: Any,
        api_key: str = "",
        adapter_resolver: Resolver | None = None,
        composer: Composer | None = None,
        cache_dir: Path | None = None,
        process: VllmProcess | None = None,
    ) -> None:
        super().__init__(cfg, model_info=model_info, tokenizer=tokenizer, api_key=api_key)
        self.health_path, self.metric_names = VLLMBackend.health_path, VLLM_METRICS
        self.resolver = adapter_resolver
        self.composer = composer
        self.cache_dir = cache_dir
        self.process = process
        self._served_name = cfg.upstream_model
        self._resident: dict[str, frozenset[str]] = {}  # LoRA name -> the adapter ids in it
        self._loading: dict[str, asyncio.Lock] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.process is not None:
            await self.process.start()
        await super().start()

    async def shutdown(self) -> None:
        await super().shutdown()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    async def _discover(self) -> None:
        """The served model's name (the one model without a parent) and context length."""
        try:
            response = await self.client.get("/v1/models", timeout=HEALTH_TIMEOUT_S)
            models = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            models = []
        bases = [m for m in models if isinstance(m, dict) and not m.get("parent")]
        if not self._served_name and bases:
            self._served_name = str(bases[0].get("id", ""))
        await super()._discover()

    def upstream_base_model(self) -> str:
        return self._served_name or self._model_info.id

    def upstream_model(self, request: GenerateRequest) -> str:
        return self.upstream_base_model()

    # -- adapters ----------------------------------------------------------------------------

    @property
    def resident_adapters(self) -> frozenset[str]:
        """LoRA names loaded on the replica by this backend: adapter ids and `cat-…`
        compositions (`lora_name`)."""
        return frozenset(self._resident)

    def stats(self) -> EngineStats:
        return replace(super().stats(), resident_adapters=len(self._resident))

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        await self._load(adapter_id, path, frozenset([adapter_id]))

    async def unload_adapter(self, adapter_id: str) -> None:
        """Unload `adapter_id` and every composition made from it. The replica is told
        even when this backend did not load it (another gateway may have); a replica that
        cannot be reached is logged, not raised: the registry row is gone, so no request
        can name the adapter again."""
        names = [n for n, ids in self._resident.items() if adapter_id in ids and n != adapter_id]
        for name in [adapter_id, *names]:
            self._resident.pop(name, None)
            try:
                response = await self.client.post(
                    "/v1/unload_lora_adapter", json={"lora_name": name}
                )
            except httpx.HTTPError as e:
                log.warning("backend %s: could not unload %s: %s", self.name, name, e)
                continue
            if response.status_code not in (200, 400, 404):  # 400/404: it was not loaded
                log.warning(
                    "backend %s: unloading %s: HTTP %d %s",
                    self.name,
                    name,
                    response.status_code,
                    response.text[:200],
                )
            if name.startswith("cat-") and self.cache_dir is not None:
                await asyncio.to_thread(_remove_tree, self.cache_dir / name)

    def forget(self, model: str) -> bool:
        return self._resident.pop(model, None) is not None

    async def _ensure_lora(self, adapters: tuple[AdapterWeight, ...]) -> str | None:
        """The LoRA name of `adapters`, loaded on the replica (built first if composed)."""
        name = lora_name(adapters)
        if name is None or name in self._resident:
            return name
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._resident:
                return name
            paths = [await self._adapter_path(a.adapter_id) for a in adapters]
            if name.startswith("cat-"):
                path = await self._compose(name, [(p, a.weight) for p, a in zip(paths, adapters)])
            else:
                path = paths[0]
            await self._load(name, str(path), frozenset(a.adapter_id for a in adapters))
        self._loading.pop(name, None)
        return name

    async def _adapter_path(self, adapter_id: str) -> str:
        path = None if self.resolver is None else await asyncio.to_thread(self.resolver, adapter_id)
        if path is None:
            raise ModelNotFoundError(f"The adapter '{adapter_id}' does not exist.", param="model")
        return path

    async def _compose(self, name: str, inputs: list[tuple[str, float]]) -> Path:
        if self.composer is None or self.cache_dir is None:
            raise InvalidRequestError(
                f"backend {self.name} cannot stack adapters: no composer was given",
                param="adapters",
            )
        out = self.cache_dir / name
        if not (out / "adapter_config.json").is_file():
            await asyncio.to_thread(self.composer, inputs, out)
        return out

    async def _load(self, name: str, path: str, adapter_ids: frozenset[str]) -> None:
        try:
            response = await self.client.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
            )
        except httpx.HTTPError as e:
            raise BackendUnavailableError(
                f"backend {self.name} ({self.url}) could not be reached to load an adapter: {e}",
                retry_after=1,
            ) from None
        if response.status_code != 200:
            message, _, _ = error_fields(response.content)
            lowered = message.lower()
            if "already" not in lowered:  # loaded by another gateway: fine
                # vLLM answers 500 for an adapter its LoRA settings cannot hold
                if response.status_code in (400, 404, 422) or "max_lora_rank" in lowered:
                    raise InvalidRequestError(
                        f"backend {self.name} cannot load the adapter: {message}",
                        param="adapters" if name.startswith("cat-") else "model",
                    )
                raise map_status(self.name, response.status_code, message, None, None)
        self._resident[name] = adapter_ids

    # -- generation --------------------------------------------------------------------------

    async def request_body(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        lora = await self._ensure_lora(request.adapters)
        body: dict[str, Any] = {
            "model": lora or self.upstream_base_model(),
            "prompt": request.prompt_token_ids,
            **sampling_body(request.sampling, is_chat=False),
            "return_token_ids": True,
        }
        if request.sampling.logprobs is not None:
            body["return_tokens_as_token_ids"] = True  # exact ids; decoded here
        if request.cache_scope:
            salt = hashlib.sha256(request.cache_scope.encode()).hexdigest()[:32]
            body["cache_salt"] = salt
        if request.response_format is not None:
            body["structured_outputs"] = structured_outputs(request.response_format)
        return "/v1/completions", body


def structured_outputs(response_format: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `response_format` as vLLM's `structured_outputs`; a 400 for what it lacks."""
    kind = response_format.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return {"json": schema if schema else {"type": "object"}}
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported by the vllm backend",
        param="response_format.type",
    )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- the managed server ----------------------------------------------------------------------


def vllm_command(
    python: str,
    *,
    model_dir: str = "{model_dir}",
    served_name: str = "{model}",
    port: str | int = "{port}",
    max_loras: int = 4,
    max_lora_rank: int = 64,
    max_model_len: int = 2048,
    dtype: str = "bfloat16",
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of a vLLM OpenAI-compatible server on loopback with LoRA enabled.
    (`python -m vllm.entrypoints.openai.api_server`: the `vllm` script fails on the CPU
    build's package name.) Placeholders are filled by `expand_command`."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_dir, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", dtype, "--max-model-len", str(max_model_len),
        "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
        "--seed", "0", "--disable-uvicorn-access-log",
        *extra,
    ]  # fmt: skip


def vllm_model_dir(model_dir: Path, out: Path) -> Path:
    """`model_dir` (a model cache's HF directory) as a vLLM server should read it: `out`,
    holding links to its files but ownllm's quantised blocks (`QUANT_FILE`, the GGUF's own
    blocks: no weights vLLM should read; only the model's files are linked)."""
    from ownllm.formats.quant import QUANT_FILE

    out.mkdir(parents=True, exist_ok=True)
    for src in model_dir.iterdir():
        link = out / src.name
        if src.name == QUANT_FILE or not src.is_file():
            continue
        if link.is_symlink() and link.resolve() == src.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(src.resolve())
    for link in out.iterdir():  # what the cache no longer has (a rebuilt cache)
        if link.is_symlink() and not link.exists():
            link.unlink()
    return out


def expand_command(command: Sequence[str], values: dict[str, str]) -> list[str]:
    """`{model_dir}`, `{model}`, `{host}` and `{port}` in a configured command filled in."""
    out = []
    for part in command:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        out.append(part)
    return out


class VllmProcess:
    """A vLLM server ownllm runs: started in its own process group with its output in
    `log_path`, ready once `url`/health answers 200 (within `start_timeout_s`, failing at
    once if it exits), stopped with SIGTERM then SIGKILL to the whole group."""

    def __init__(
        self,
        argv: Sequence[str],
        url: str,
        log_path: Path,
        *,
        start_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.url = base_url(url)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.env = env or {}
        self.popen: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its engine processes go with it
            )
        log.info("vllm server pid %d starting, log in %s", self.popen.pid, self.log_path)

    async def start(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            self.spawn()
        started = time.monotonic()
        deadline = started + self.start_timeout_s
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as client:
            while True:
                code = self.popen.poll()
                if code is not None:
                    raise BackendUnavailableError(
                        f"the vllm server exited with status {code} while starting; the end "
                        f"of {self.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    await asyncio.to_thread(self.stop)
                    raise BackendUnavailableError(
                        f"the vllm server did not answer {self.url}/health within "
                        f"{self.start_timeout_s:.0f} s; the end of {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                await asyncio.sleep(POLL_S)
        self.ready_s = time.monotonic() - started
        log.info("vllm server pid %d ready in %.0f s", self.popen.pid, self.ready_s)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        with contextlib.suppress(ProcessLookupError):  # engine processes it left behind
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, num_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return "(no log)"


__all__ = [
    "VLLMBackend",
    "VllmProcess",
    "expand_command",
    "lora_name",
    "structured_outputs",
    "vllm_command",
    "vllm_model_dir",
]
