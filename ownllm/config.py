"""Configuration: one frozen dataclass per concern, built once.

Precedence, lowest first: field defaults < `ownllm.toml` (or `--config FILE`)
< `OWNLLM_*` environment variables < command-line flags. Each field carries
its help text, its environment variable and its allowed values in metadata,
so validation messages and the README table come from one place
(`ownllm config --table` prints it). A section may hold a nested table:
`[model.generation]` is `ModelConfig.generation`, its variables
`OWNLLM_MODEL_GENERATION_*`. `[[backends]]` is a list of tables, one per inference
backend (`BackendConfig`); `--backend KIND=URL` on `ownllm serve` replaces it.

A bad value raises `ConfigError` naming the field, the value and what is
allowed; `ownllm serve` prints that one line and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A setting has a value ownllm cannot use."""


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    meta = {"help": help, "env": env, "choices": choices, "min": min, "max": max}
    return field(default=default, metadata=meta)


def default_home() -> str:
    return os.environ.get("OWNLLM_HOME") or str(Path.home() / ".ownllm")


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting("127.0.0.1", "Address to listen on.", env="OWNLLM_HOST")
    port: int = setting(8000, "TCP port to listen on.", env="OWNLLM_PORT", min=1, max=65535)
    allowed_hosts: str = setting(
        "",
        "Host names a server on a loopback address answers besides localhost, 127.0.0.1 and "
        "[::1] (comma-separated; e.g. the name a reverse proxy passes on; `*`: any, which turns "
        "the DNS-rebinding guard off). Pages on these hosts may also post forms to it.",
    )
    log_level: str = setting(
        "info", "Log level.", choices=("debug", "info", "warning", "error", "critical")
    )
    run_worker: bool = setting(
        True,
        "Run one background worker (fine-tuning, vector store ingestion) inside `ownllm serve`.",
        env="OWNLLM_SERVER_RUN_WORKER",
    )
    # The largest legitimate JSON body: a prompt filling a 128k-token context is ~0.5 MiB of
    # English, ~1.5 MiB of \u-escaped CJK; an embeddings batch of 300k tokens (OpenAI's cap)
    # sent as token ids is ~2 MiB. 8 MiB leaves 4x over both.
    max_json_body_bytes: int = setting(
        8 << 20,
        "Largest request body of a JSON route (chat, completions, embeddings, jobs, admin), in "
        "bytes; larger is refused with 413 before it is read. Uploads have their own limits "
        "(tuning.max_file_bytes; adapter archives 2 GiB).",
        min=1024,
        max=1 << 34,
    )
    body_timeout_s: float = setting(
        60.0,
        "Seconds a request body may send nothing before it is refused with 408 (as nginx's "
        "client_body_timeout; 0: wait forever).",
        min=0,
        max=86400,
    )
    # uvicorn's own default is 5 s, the same as httpx's (and so the openai client's) idle
    # expiry: a client then reuses a connection in the instant the server closes it, and the
    # request fails with a reset (httpx.ReadError). 75 s is nginx's keepalive_timeout.
    keep_alive_s: float = setting(
        75.0,
        "Seconds an idle keep-alive connection stays open. Longer than clients' own idle "
        "expiry (httpx and the openai client: 5 s) and, behind a load balancer, than its idle "
        "timeout, so no client sends a request on a connection the server is closing.",
        min=1,
        max=3600,
    )


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling values a request gets for the fields it leaves out; None: not set here.

    In the config file this is the `[model.generation]` table. `ownllm.models.generation`
    layers it over the model's own defaults (catalog entry, generation_config.json).
    """

    temperature: float | None = setting(
        None,
        "Temperature for requests that send none, over the model's own default (its catalog "
        "entry or generation_config.json); 0 is greedy. Unset: the model's, else 1.0.",
        min=0.0,
        max=2.0,
    )
    top_p: float | None = setting(
        None, "top_p for requests that send none. Unset: the model's, else 1.0.", min=0.0, max=1.0
    )
    top_k: int | None = setting(
        None,
        "top_k for requests that send none (0: off). Unset: the model's, else off.",
        min=0,
        max=1_000_000,
    )
    min_p: float | None = setting(
        None, "min_p for requests that send none. Unset: the model's, else 0.", min=0.0, max=1.0
    )
    repetition_penalty: float | None = setting(
        None,
        "repetition_penalty for requests that send none. Unset: the model's, else 1.0.",
        min=0.01,
        max=10.0,
    )

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str) -> GenerationDefaults:
        """Checked defaults from a mapping (keys ownllm does not sample with are ignored);
        a bad value raises ConfigError naming the key, the value and `source`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return cls(
            **{
                key: _coerce(key, fields[key], value, source)
                for key, value in values.items()
                if key in fields and value is not None
            }
        )

    def over(self, base: GenerationDefaults) -> GenerationDefaults:
        """These values where set, `base`'s elsewhere."""
        return dataclasses.replace(base, **self.as_dict())

    def as_dict(self) -> dict[str, float | int]:
        """The values that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    model: str = setting(
        "smollm2-135m-instruct",
        "Base model: a catalog id, a Hugging Face model directory, or a .gguf file.",
        env="OWNLLM_MODEL",
    )
    name: str = setting(
        "", "Model id served to clients (default: the catalog id or the file name)."
    )
    dtype: str = setting(
        "auto",
        "Compute dtype: auto (bfloat16 where the CPU/GPU has native bf16, else float32).",
        env="OWNLLM_DTYPE",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    quantization: str = setting(
        "none",
        "Base weights: none (dense, in dtype); q4_1, q4_0, q8_0 (a GGUF file's own blocks, "
        "else quantised at load); int8 (per-channel, from any model); auto (a GGUF file's "
        "own types, none for a Hugging Face directory). Quantised weights need the C "
        "kernels on CPU; elsewhere they are served dequantised.",
        env="OWNLLM_QUANTIZATION",
        choices=("none", "auto", "q4_1", "q4_0", "q8_0", "int8"),
    )
    device: str = setting("auto", "Device: auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    max_model_len: int = setting(
        0, "Context length limit in tokens (0: the model's own).", min=0, max=1_048_576
    )
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str = setting(
        "",
        "Data directory: database, files, adapters, model cache (default ~/.ownllm).",
        env="OWNLLM_HOME",
    )
    database_url: str = setting(
        "",
        "SQLAlchemy URL (default: SQLite under the data dir); "
        "postgresql+psycopg://user:pass@host/db for PostgreSQL.",
        env="OWNLLM_DATABASE_URL",
    )
    tenant_quota_bytes: int = setting(
        10 << 30,
        "Disk space each tenant's uploaded files and adapters may take together, in bytes; "
        "a write past it is refused with 429 insufficient_quota (0: unlimited; the admin "
        "is never limited).",
        min=0,
        max=1 << 50,
    )

    @property
    def home(self) -> Path:
        return Path(self.data_dir or default_home()).expanduser()

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'ownllm.db'}"


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = setting(64, "Most sequences decoded together in one step.", min=1, max=4096)
    max_num_batched_tokens: int = setting(
        1024, "Token budget of one engine step (prefill is chunked to fit).", min=16, max=1 << 20
    )
    batch_tokens_with_interactive: int = setting(
        8,
        "Most tokens batch-priority rows (/v1/batches lines, eval runs) compute in one step "
        "while interactive requests run or wait (0: batch_step_tokens).",
        min=0,
        max=1 << 20,
    )
    batch_step_tokens: int = setting(
        32,
        "Most tokens batch-priority rows compute in one step for a while after interactive "
        "work (engine.batch_full_after_steps): an interactive request that arrives waits for "
        "the step in progress, so that step stays short (0: the whole step budget).",
        min=0,
        max=1 << 20,
    )
    batch_full_after_steps: int = setting(
        512,
        "Steps without interactive work after which batch rows fill whole steps again, for "
        "a batch's full throughput on an otherwise idle server (0: never).",
        min=0,
        max=1 << 30,
    )
    block_size: int = setting(16, "KV-cache block size in tokens.", choices=(8, 16, 32, 64))
    kv_cache_tokens: int = setting(
        0, "KV-cache capacity in tokens (0: sized from free memory).", min=0, max=1 << 26
    )
    max_loras: int = setting(
        16, "Adapters resident at once; others load on demand (LRU).", min=1, max=4096
    )
    max_lora_rank: int = setting(64, "Largest LoRA rank the engine accepts.", min=1, max=1024)
    max_queue: int = setting(
        512, "Requests waiting beyond this are refused with 503.", min=1, max=1 << 20
    )
    max_queue_seqs: int = setting(
        0,
        "Sequences (n of each request) that may wait for admission; beyond, 503, and 400 "
        "for a request over it alone (0: 8 × max_num_seqs, eight full batches).",
        min=0,
        max=1 << 20,
    )
    max_queue_tokens: int = setting(
        0,
        "Tokens waiting requests may reserve (prompt + n × max_tokens each); beyond, 503, "
        "and 400 for a request over it alone (0: 4 × the KV-cache capacity, at least "
        "the model's context).",
        min=0,
        max=1 << 40,
    )
    threads: int = setting(0, "torch CPU threads (0: all cores).", min=0, max=1024)
    enable_prefix_caching: bool = setting(True, "Reuse cached KV blocks of shared prompt prefixes.")
    cpu_kernels: bool = setting(
        True,
        "Use ownllm's C kernels on CPU (rotary + KV-cache write, decode attention, "
        "RMSNorm, SiLU, multi-LoRA), compiled once with the system C compiler into "
        "~/.cache/ownllm/kernels ($OWNLLM_KERNEL_CACHE); without a compiler, the torch path.",
    )
    quant_activations: str = setting(
        "float",
        "What the quantised weights (model.quantization) multiply: float (x as computed, in "
        "dtype; the reference) or int8 (each row of x rounded to int8 blocks of 32 for "
        "integer dot products, llama.cpp's scheme: faster, slightly less exact; q4_0, q4_1, "
        "q8_0 weights).",
        choices=("float", "int8"),
    )


@dataclass(frozen=True)
class AuthConfig:
    admin_key: str = setting(
        "",
        "Admin key: manages tenants and keys over HTTP (`Authorization: Bearer KEY`). "
        "Never printed by `ownllm config`.",
        env="OWNLLM_ADMIN_KEY",
    )
    key_cache_seconds: float = setting(
        5.0,
        "Seconds a verified key stays cached in memory; a key revoked from another "
        "process or replica stops working within this time (0: check the database every call).",
        min=0,
        max=3600,
    )


@dataclass(frozen=True)
class TuningConfig:
    max_file_bytes: int = setting(
        512 * 1024 * 1024, "Largest file `POST /v1/files` accepts (413 above).", min=1, max=1 << 40
    )
    poll_interval_s: float = setting(
        2.0,
        "Seconds an idle fine-tuning worker waits between looks for queued jobs.",
        min=0.05,
        max=600,
    )
    heartbeat_timeout_s: float = setting(
        60.0,
        "A running job whose worker has not reported for this long is requeued "
        "(resumed from its last checkpoint) or failed.",
        min=2,
        max=86400,
    )
    max_attempts: int = setting(
        3, "Times a job is started before a lost worker fails it for good.", min=1, max=100
    )
    max_seq_len: int = setting(
        2048, "Training examples longer than this many tokens are truncated.", min=16, max=1 << 20
    )
    max_batch_tokens: int = setting(
        2048, "Tokens packed into one forward/backward pass (memory bound).", min=16, max=1 << 22
    )
    lora_r: int = setting(8, "Default LoRA rank of new fine-tuning jobs.", min=1, max=256)
    lora_alpha: float = setting(
        16.0, "Default LoRA alpha (scaling = alpha / r).", min=0.01, max=4096
    )
    lora_dropout: float = setting(0.0, "Default LoRA dropout.", min=0.0, max=0.9)
    lora_targets: str = setting(
        "all-linear",
        "Default LoRA target modules: all-linear, or a comma list of "
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.",
    )
    threads: int = setting(0, "torch CPU threads of the trainer (0: all cores).", min=0, max=1024)


@dataclass(frozen=True)
class BatchConfig:
    run_worker: bool = setting(
        True, "Answer `/v1/batches` lines inside `ownllm serve` (at batch priority)."
    )
    max_lines: int = setting(
        50_000, "Most requests in one batch input file (OpenAI's cap).", min=1, max=1 << 24
    )
    max_file_bytes: int = setting(
        200 * 1024 * 1024,
        "Largest batch input file (OpenAI's cap: 200 MB); a larger one fails the batch.",
        min=1,
        max=1 << 40,
    )
    max_concurrent_lines: int = setting(
        0,
        "Lines one server runs at once (0: engine.max_num_seqs, a full batch of rows that "
        "interactive requests preempt).",
        min=0,
        max=4096,
    )
    lease_s: float = setting(
        60.0,
        "A line or batch whose worker has not renewed its claim for this long is taken "
        "over by another worker (a worker renews every quarter of it).",
        min=1,
        max=86400,
    )
    poll_interval_s: float = setting(
        1.0, "Seconds an idle batch worker waits between looks for work.", min=0.01, max=600
    )
    max_attempts: int = setting(
        3, "Times a line is started before a lost worker fails it for good.", min=1, max=100
    )


@dataclass(frozen=True)
class VectorStoreConfig:
    exact_max_chunks: int = setting(
        20_000,
        "A vector store with up to this many chunks is searched exactly; a larger one "
        "through a usearch HNSW index (filtered searches stay exact).",
        min=0,
        max=1 << 31,
    )
    index_cache_vectors: int = setting(
        2_000_000,
        "Vectors a server keeps in its store indexes (least recently used stores are "
        "dropped, and loaded from the database again when searched).",
        min=1,
        max=1 << 34,
    )


@dataclass(frozen=True)
class EvalConfig:
    run_worker: bool = setting(
        True, "Run queued eval and red-team runs inside `ownllm serve` (at batch priority)."
    )
    max_concurrent_runs: int = setting(2, "Eval runs one server works on at once.", min=1, max=64)
    max_concurrent_items: int = setting(
        4, "Items of one run sampled and graded at once.", min=1, max=256
    )
    lease_s: float = setting(
        60.0,
        "A run whose worker has not renewed its heartbeat for this long is taken over by "
        "another worker, which carries on from the items already graded.",
        min=1,
        max=86400,
    )
    poll_interval_s: float = setting(
        1.0, "Seconds an idle eval worker waits between looks for work.", min=0.01, max=600
    )


@dataclass(frozen=True)
class GuardConfig:
    policy_file: str = setting(
        "",
        "Guardrail policy file, TOML or YAML (empty: the shipped default, which redacts PII "
        "and secrets in stored completions and flags prompt-injection attempts).",
        env="OWNLLM_GUARD_POLICY_FILE",
    )
    classifier_path: str = setting(
        "",
        "Local safety-classifier model directory used by `classifier` policy rules "
        "(none ships; empty: rule-based detection only).",
        env="OWNLLM_GUARD_CLASSIFIER_PATH",
    )
    during_call: bool = setting(
        True,
        "Send a call that no `remote = true` backend may take to its backend while the input "
        "guard runs (a block or redaction aborts it before anything reaches the client); "
        "false: the guard finishes before any backend sees the prompt.",
        env="OWNLLM_GUARD_DURING_CALL",
    )


@dataclass(frozen=True)
class CaptureConfig:
    default_store: bool = setting(
        False,
        "Store chat completions when neither the request (`store`) nor the key or tenant "
        "default says otherwise.",
        env="OWNLLM_CAPTURE_DEFAULT_STORE",
    )
    retention_days: int = setting(
        30,
        "Days stored completions and guard events are kept before the periodic purge "
        "deletes them (0: keep forever).",
        env="OWNLLM_CAPTURE_RETENTION_DAYS",
        min=0,
        max=36500,
    )
    purge_interval_s: int = setting(
        3600, "Seconds between retention purges in `ownllm serve`.", min=10, max=86400 * 7
    )


@dataclass(frozen=True)
class CostConfig:
    hardware: str = setting(
        "cpu-small",
        "Hardware preset from the price table: cpu-small (AWS c7i.xlarge, 4 vCPU, "
        "$0.1785/h on-demand us-east-1) or h100 (one H100 80 GB, $2.49/h Lambda on-demand); "
        "list prices as of 2025-10-20, sources in ownllm/gateway/prices.toml.",
        env="OWNLLM_COST_HARDWARE",
    )
    hardware_price_per_hour: float = setting(
        0.0,
        "Your price per hour of one serving box in USD (0: the preset's list price).",
        min=0,
    )
    replicas: int = setting(1, "Serving boxes you pay for (for the cost account).", min=1)
    tenant_price_per_million: float = setting(
        0.0,
        "USD per million tokens (prompt + completion) a tenant's own cost view charges it "
        "(0: a tenant sees what its tokens cost on each API but no self-hosted cost, since a "
        "share of the hardware would reveal the server's total traffic).",
        min=0,
    )
    price_table: str = setting(
        "",
        "TOML price table of paid APIs and hardware presets (default: the shipped, dated "
        "ownllm/gateway/prices.toml; copy and edit it for your prices).",
        env="OWNLLM_COST_PRICE_TABLE",
    )


BACKEND_KINDS = ("embedded", "vllm", "openai")


@dataclass(frozen=True)
class BackendConfig:
    """One inference backend: a `[[backends]]` table (or `--backend KIND=URL`).

    `embedded` is the in-process engine over the served model; `vllm` a vLLM
    OpenAI-compatible server of the same base model with LoRA enabled (external at `url`,
    or started from `command`); `openai` any OpenAI-compatible endpoint (another ownllm,
    llama.cpp's server, Ollama, a paid API)."""

    name: str = setting("", "Name of the backend in logs, metrics and routing (default KIND-N).")
    kind: str = setting("embedded", "What serves the requests.", choices=BACKEND_KINDS)
    url: str = setting(
        "", "Base URL of the server (http://host:port, without /v1); none for embedded."
    )
    models: tuple[str, ...] = setting(
        (),
        "Model ids the endpoint serves under their own names (kind openai): a request naming "
        "one is sent as it is; any other (the served model, overflowing to it) as "
        "upstream_model, else the first of these.",
    )
    upstream_model: str = setting(
        "",
        "Model id sent to the endpoint for the served model (default: a vllm server's "
        "served name; for openai, the first of `models`, else the id the client named).",
    )
    api_key_env: str = setting(
        "", "Environment variable holding the API key sent as `Authorization: Bearer`."
    )
    max_concurrency: int = setting(
        64,
        "Requests in flight on this backend at once; beyond, 503 with Retry-After.",
        min=1,
        max=1 << 20,
    )
    remote: bool = setting(
        False, "Requests sent here leave the company's premises (only the hybrid policy may)."
    )
    dialect: str = setting(
        "openai",
        "For kind openai: `openai` sends chat messages as they are (llama.cpp, Ollama, paid "
        "APIs); `ownllm` is another ownllm sharing the adapter registry (adapters go by "
        "registry id).",
        choices=("openai", "ownllm"),
    )
    command: tuple[str, ...] = setting(
        (),
        "For kind vllm: the argv of a vLLM server ownllm starts, waits for and stops (it "
        "must listen at `url`); empty: the server at `url` is run by someone else.",
    )
    timeout_s: float = setting(
        600.0, "Seconds a request may wait for the next bytes from the backend.", min=1, max=86400
    )
    start_timeout_s: float = setting(
        600.0, "Seconds a managed vLLM server may take to answer /health.", min=1, max=86400
    )
    max_model_len: int = setting(
        0,
        "Context length of the backend's model (0: what its /v1/models says, else the "
        "served model's).",
        min=0,
        max=1_048_576,
    )


@dataclass(frozen=True)
class HybridPolicy:
    """Where one tenant's requests for one model may go; a `[[routing.policy]]` table.

    The most specific entry wins: tenant and model named, then the tenant's `*`, then the
    model's `*` tenant, then `*`/`*`; with none, `local_only`."""

    tenant: str = setting("*", "Tenant id this entry applies to (`*`: every tenant).")
    model: str = setting("*", "Model id the client names (`*`: every model).")
    mode: str = setting(
        "local_only",
        "local_only: never leaves the premises; overflow: to `remote` when every local "
        "replica's queue is past `queue_threshold`; fallback: to `remote` when no local "
        "replica is healthy; route: the model is served only by `remote`.",
        choices=("local_only", "overflow", "fallback", "route"),
    )
    remote: str = setting("", "Name of the `remote = true` backend (not for local_only).")
    queue_threshold: int = setting(
        16, "overflow: requests queued on the least-loaded local replica.", min=0, max=1 << 20
    )


@dataclass(frozen=True)
class RoutingConfig:
    """How the gateway picks a replica (`ownllm.gateway.routing` has the formula)."""

    strategy: str = setting(
        "affinity",
        "affinity: score adapter residency, tenant-scoped prefix reuse and load; round_robin; "
        "least_loaded: the fewest queued and running requests.",
        choices=("affinity", "round_robin", "least_loaded"),
    )
    adapter_weight: float = setting(
        1.0, "Score for a replica where the request's adapter is resident.", min=0, max=100
    )
    prefix_weight: float = setting(
        2.0, "Score for a replica holding the whole prompt prefix (scaled by the share).",
        min=0, max=100,
    )  # fmt: skip
    queue_weight: float = setting(
        3.0, "Penalty for load: weight x q / (q + queue_scale), q = queued + running.",
        min=0, max=100,
    )  # fmt: skip
    kv_weight: float = setting(
        1.0, "Penalty for KV-cache use (0..1, scraped from the replica).", min=0, max=100
    )
    queue_scale: float = setting(
        8.0, "Requests at which the load penalty reaches half its weight.", min=0.1, max=1 << 20
    )
    load_factor: float = setting(
        1.25, "Bounded load: a replica whose q exceeds load_factor x the candidates' mean q + "
        "load_slack is not scored (affinity yields to balance).", min=1, max=1 << 20,
    )  # fmt: skip
    load_slack: float = setting(
        2.0, "Requests a replica may run above load_factor x the mean before it is passed over.",
        min=0, max=1 << 20,
    )  # fmt: skip
    prefill_slack: int = setting(
        50, "Bounded prefill: a replica with more than this many prompt tokens still to prefill "
        "(this gateway's requests there without a first token, less what it is thought to have "
        "cached) beyond the least such replica is not scored: a request waits behind no long "
        "prefill.", min=0, max=1 << 30,
    )  # fmt: skip
    adapter_wait_tokens: int = setting(
        300, "When no replica within prefill_slack holds the request's adapter, one that does "
        "is still taken if its prefill backlog is within this many tokens of the least "
        "(a short wait instead of loading the adapter elsewhere); in a fleet of more than "
        "adapter_wait_replicas candidates the wait shrinks as adapter_wait_replicas / n.",
        min=0, max=1 << 30,
    )  # fmt: skip
    adapter_wait_replicas: int = setting(
        8, "Candidate replicas up to which adapter_wait_tokens applies in full; among n > this, "
        "the wait is adapter_wait_tokens x this / n (a large fleet's slots hold the adapters "
        "in use, so a load evicts little, and round robin's queueing is short). 0: the same "
        "wait at every size. The defaults meet the routing targets at 8-64 replicas "
        "(bench/RESULTS.md).", min=0, max=1 << 20,
    )  # fmt: skip
    adapter_wait_load: float = setting(
        4.0, "Requests the replica holding the request's adapter may run above the load bound "
        "(load_factor x mean + load_slack) and still be taken when no replica within the "
        "bounds holds it: a few more sequences in its batch instead of a load elsewhere.",
        min=0, max=1 << 20,
    )  # fmt: skip
    own_prefill: float = setting(
        0.0, "Share of the request's own prompt tokens a replica is not thought to hold that "
        "counts in its prefill backlog for both bounds (1: the prefill ahead of the first "
        "token). Above 0, a conversation waits longer for the replica holding its cache and "
        "adapter: TTFT p99 and adapter loads fall, queueing p99 rises (bench/RESULTS.md).",
        min=0, max=100,
    )  # fmt: skip
    conversations: bool = setting(
        True, "Count each replica's open conversations (answers whose next turn has not come, "
        "weighted by the share of conversations that continue and decaying with the think "
        "time): a request that must load its adapter goes where the fewest are open, and "
        "waits longer for its adapter's replica the more its prefill would put at risk.",
    )  # fmt: skip
    conversation_think_s: float = setting(
        0.0, "Seconds from an answer to its conversation's next turn, for `conversations`. "
        "0: learned, the mean of the last 256 gaps the router saw.", min=0, max=3600,
    )  # fmt: skip
    prefix_block_tokens: int = setting(
        16, "Prompt tokens per hashed prefix block (vLLM's block size).", min=1, max=4096
    )
    prefix_index_blocks: int = setting(
        200_000, "Prefix blocks remembered per replica (an approximate LRU index).",
        min=1, max=1 << 26,
    )  # fmt: skip
    adapter_slots: int = setting(
        8, "Adapters a replica is assumed to hold resident (its --max-loras).", min=1, max=4096
    )
    health_interval_s: float = setting(
        5.0, "Seconds between health checks and metric scrapes of each replica.", min=0.05,
        max=3600,
    )  # fmt: skip
    health_timeout_s: float = setting(
        2.0, "Seconds a health check or scrape may take.", min=0.05, max=600
    )
    failure_threshold: int = setting(
        3, "Consecutive failures that open a replica's circuit.", min=1, max=1000
    )
    cooldown_s: float = setting(
        15.0, "Seconds an open circuit waits before one half-open probe request.", min=0,
        max=86400,
    )  # fmt: skip
    max_attempts: int = setting(
        3, "Replicas tried for a request that fails before its first token.", min=1, max=64
    )
    policy: tuple[HybridPolicy, ...] = setting(
        (), "Hybrid policies, `[[routing.policy]]` tables (see HybridPolicy)."
    )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    vector_stores: VectorStoreConfig = field(default_factory=VectorStoreConfig)
    backends: tuple[BackendConfig, ...] = ()  # empty: the embedded engine, as one backend
    evals: EvalConfig = field(default_factory=EvalConfig)


_SECTION_TYPES = {
    "server": ServerConfig,
    "model": ModelConfig,
    "store": StoreConfig,
    "engine": EngineConfig,
    "auth": AuthConfig,
    "cost": CostConfig,
    "tuning": TuningConfig,
    "guard": GuardConfig,
    "capture": CaptureConfig,
    "routing": RoutingConfig,
    "batch": BatchConfig,
    "vector_stores": VectorStoreConfig,
    "evals": EvalConfig,
}

# fields that hold a list of tables (`[[routing.policy]]`): the dataclass of one entry
_LIST_TABLES = {("routing", "policy"): HybridPolicy}


_TYPES = {"int": int, "bool": bool, "str": str, "float": float, "tuple[str, ...]": tuple}
LIST_SECTIONS = ("backends",)  # `[[backends]]`: a list of tables


def env_name(section: str, f: dataclasses.Field) -> str:
    prefix = section.upper().replace(".", "_")
    return f.metadata.get("env") or f"OWNLLM_{prefix}_{f.name.upper()}"


def _table_type(f: dataclasses.Field) -> type | None:
    """The dataclass of a nested table such as `[model.generation]`, else None."""
    factory = f.default_factory
    return factory if dataclasses.is_dataclass(factory) else None


def _coerce(name: str, f: dataclasses.Field, value: Any, source: str) -> Any:
    kind = _TYPES.get(str(f.type).removesuffix(" | None"), str)
    try:
        if kind is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if kind is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in ("1", "true", "yes", "on"):
                out = True
            elif str(value).strip().lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError):
        expected = "a list of strings" if kind is tuple else kind.__name__
        raise ConfigError(f"{name} = {value!r} (from {source}): expected {expected}") from None
    meta = f.metadata
    if meta.get("choices") is not None and out not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{name} = {value!r} (from {source}): must be one of {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ConfigError(f"{name} = {value!r} (from {source}): must be between {lo} and {hi}")
    return out


def load_config(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the Config: defaults < file < env < overrides (`{"server": {"port": 9000}}`;
    `{"backends": [{"kind": "vllm", "url": …}]}` replaces the file's `[[backends]]`).

    Without `config_file`, `./ownllm.toml` is read when it exists.
    """
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    path = Path(config_file) if config_file else Path("ownllm.toml")
    if config_file and not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
        unknown = set(file_values) - set(_SECTION_TYPES) - set(LIST_SECTIONS)
        if unknown:
            raise ConfigError(
                f"config file {str(path)!r}: unknown section [{sorted(unknown)[0]}]; "
                f"known: {', '.join([*_SECTION_TYPES, *LIST_SECTIONS])}"
            )
    overrides = overrides or {}
    sections = {
        section: _build(
            section, cls, file_values.get(section, {}), env, overrides.get(section), path
        )
        for section, cls in _SECTION_TYPES.items()
    }
    given = overrides.get("backends")
    if given:
        backends = _backends(given, "--backend")
    else:
        backends = _backends(file_values.get("backends", []), str(path))
    return Config(**sections, backends=backends)


def _backends(tables: Any, source: str) -> tuple[BackendConfig, ...]:
    """The `[[backends]]` list, each table checked: known keys, a unique name, a URL where
    the kind needs one, `command` only for vllm."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{source}: backends must be a list of tables ([[backends]])")
    fields = {f.name: f for f in dataclasses.fields(BackendConfig)}
    out: list[BackendConfig] = []
    for i, table in enumerate(tables):
        where = f"backends[{i}]"
        for key in table:
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown setting {where}.{key}; known: {', '.join(fields)}"
                )
        values = {
            key: _coerce(f"{where}.{key}", fields[key], value, source)
            for key, value in table.items()
            if value is not None
        }
        cfg = BackendConfig(**values)
        if not cfg.name:
            same_kind = sum(b.kind == cfg.kind for b in out)
            cfg = dataclasses.replace(cfg, name=f"{cfg.kind}-{same_kind}")
        _check_backend(cfg, where, source)
        if any(b.name == cfg.name for b in out):
            raise ConfigError(f"{source}: {where}.name = {cfg.name!r} is used twice")
        out.append(cfg)
    return tuple(out)


def _check_backend(cfg: BackendConfig, where: str, source: str) -> None:
    if cfg.kind == "embedded":
        if cfg.url or cfg.command:
            raise ConfigError(
                f"{source}: {where} is embedded (this process): it takes no url or command"
            )
        return
    if not cfg.url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where}.url = {cfg.url!r} (from {source}): kind {cfg.kind} needs the server's "
            "http:// or https:// base URL"
        )
    if cfg.command and cfg.kind != "vllm":
        raise ConfigError(f"{source}: {where}.command is only for kind vllm (a managed server)")


def parse_backend_flag(value: str) -> dict[str, str]:
    """`--backend KIND=URL` as a backends table; raises ConfigError naming the flag."""
    kind, sep, url = (part.strip() for part in value.partition("="))
    if kind == "embedded" and not url:
        return {"kind": kind}
    if not sep or kind not in BACKEND_KINDS[1:]:
        raise ConfigError(
            f"--backend {value!r}: expected KIND=URL, KIND one of vllm, openai "
            "(or plain `embedded`)"
        )
    return {"kind": kind, "url": url}


def _build(
    section: str,
    cls: type,
    from_file: Any,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
    path: Path,
) -> Any:
    """One section (or nested table) from its file table, the environment and overrides."""
    if not isinstance(from_file, dict):
        raise ConfigError(f"config file {str(path)!r}: [{section}] must be a table")
    overrides = overrides or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in from_file:
        if key not in fields:
            raise ConfigError(
                f"config file {str(path)!r}: unknown setting {section}.{key}; "
                f"known: {', '.join(fields)}"
            )
    values = {}
    for name, f in fields.items():
        table = _table_type(f)
        if table is not None:
            nested = f"{section}.{name}"
            values[name] = _build(
                nested, table, from_file.get(name, {}), env, overrides.get(name), path
            )
            continue
        entry_cls = _LIST_TABLES.get((section, name))
        if entry_cls is not None:
            values[name] = _build_list(f"{section}.{name}", entry_cls, from_file.get(name), path)
            continue
        value, source = f.default, None
        if name in from_file:
            value, source = from_file[name], str(path)
        ev = env_name(section, f)
        if ev in env and env[ev] != "":
            value, source = env[ev], ev
        given = overrides.get(name)
        if given is not None:
            value, source = given, f"--{name.replace('_', '-')}"
        values[name] = value if source is None else _coerce(f"{section}.{name}", f, value, source)
    return cls(**values)


def _build_list(name: str, cls: type, from_file: Any, path: Path) -> tuple[Any, ...]:
    """A list of tables from the file only (no environment variable can hold one)."""
    if from_file is None:
        return ()
    if not isinstance(from_file, list):
        raise ConfigError(f"config file {str(path)!r}: {name} must be a list of [[{name}]] tables")
    return tuple(
        _build(f"{name}[{i}]", cls, entry, {}, None, path) for i, entry in enumerate(from_file)
    )


def settings_table() -> str:
    """The Markdown table of every setting (used by the README and `ownllm config`)."""
    rows = ["| setting | env var | default | meaning |", "|---|---|---|---|"]
    for section, cls in _SECTION_TYPES.items():
        rows.extend(_table_rows(section, cls))
    rows.extend(_table_rows("backends[]", BackendConfig))
    return "\n".join(rows)


def _table_rows(section: str, cls: type) -> list[str]:
    rows = []
    for f in dataclasses.fields(cls):
        table = _table_type(f)
        if table is not None:
            rows.extend(_table_rows(f"{section}.{f.name}", table))
            continue
        entry_cls = _LIST_TABLES.get((section, f.name))
        if entry_cls is not None:
            rows.extend(_table_rows(f"{section}.{f.name}[]", entry_cls))
            continue
        default = {"": "(empty)", None: "(unset)"}.get(f.default, f.default)
        allowed = f.metadata.get("choices")
        help_text = f.metadata["help"]
        if allowed:
            help_text += " One of: " + ", ".join(str(c) for c in allowed) + "."
        env = "(file only)" if "[" in section else f"`{env_name(section, f)}`"
        if isinstance(default, tuple):
            default = list(default) or "(empty)"
        rows.append(f"| `{section}.{f.name}` | {env} | `{default}` | {help_text} |")
    return rows
