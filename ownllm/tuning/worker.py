"""The fine-tuning worker: claim a queued job, train it, publish the adapter, repeat.

`Worker.run_forever` polls the database; `run_job` does one job:
validate and tokenise the files (bad data → `failed` with error{code,
message, param}), resolve "auto" hyperparameters (written back on the job),
load the base (and the parent adapter when continuing an `ft:` model),
resume from the job's last checkpoint when it has one, train, and register
the adapter under the job's `fine_tuned_model` name. A heartbeat thread
reports liveness and reads the cancel flag; the trainer checks it between
micro-batches, so cancel takes effect within about a second of compute.

Adapters become visible only through `register_adapter` (copied into the
immutable store via a temporary directory, then the row), so a killed worker
never leaves a half-written adapter in the registry: at worst an epoch's
checkpoint is missing and the job resumes from the one before.

Left out: training several jobs at once in one worker (run more workers).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ownllm import ids
from ownllm.config import TuningConfig
from ownllm.errors import OwnLLMError
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import FineTuningJob
from ownllm.tuning import jobs
from ownllm.tuning.data import DataError, read_examples, tokenize
from ownllm.tuning.hyperparams import LoraSettings, resolve
from ownllm.tuning.parallel import Single
from ownllm.tuning.preferences import read_pairs, tokenize_pairs

log = logging.getLogger("ownllm.worker")

ADMIN = type("Admin", (), {"tenant_id": "", "is_admin": True, "can_see": lambda *a, **k: True})()


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path  # HF model directory
    sha256: str


def fine_tuned_name(job: FineTuningJob) -> str:
    return f"ft:{job.base_model}:{job.tenant_id}:{job.suffix or ''}:{job.id}"


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class Heartbeat(threading.Thread):
    """Beats every `interval` seconds; sets `cancelled` / `lost` for the trainer to see."""

    def __init__(self, db: Database, job_id: str, worker_id: str, interval: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.db, self.job_id, self.worker_id, self.interval = db, job_id, worker_id, interval
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.shutdown = threading.Event()  # the worker is stopping: hand the job back
        self.done = threading.Event()

    def beat(self) -> None:
        owned, cancel = jobs.heartbeat(self.db, self.job_id, self.worker_id)
        if not owned:
            self.lost.set()
        if cancel:
            self.cancelled.set()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a database hiccup must not kill the beat
                log.exception("heartbeat for %s failed", self.job_id)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set() or self.shutdown.is_set()


class RankFlags:
    """A rank other than 0: its trainer callbacks, which report nothing (rank 0 does) and
    stop when the process is told to."""

    def __init__(self) -> None:
        self.shutdown = threading.Event()

    def should_stop(self) -> bool:
        return self.shutdown.is_set()

    def on_step(self, metrics: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, step: int, state: dict, metrics: dict) -> None:
        pass


class Worker:
    def __init__(
        self,
        db: Database,
        data_dir: DataDir,
        base: BaseModel,
        config: TuningConfig,
        worker_id: str | None = None,
        nproc: int = 1,
    ) -> None:
        """`nproc` > 1 trains each job on that many torch.distributed ranks."""
        self.db, self.data_dir, self.base, self.config = db, data_dir, base, config
        self.nproc = nproc
        self.worker_id = worker_id or ids.worker_id()
        self.heartbeat_interval = max(0.2, min(5.0, config.heartbeat_timeout_s / 4))
        self._tokenizer = None
        self._beat: Heartbeat | RankFlags | None = None
        self._ranks = None  # the rank processes of a multi-rank job (see ownllm.tuning.ranks)

    def stop_current(self) -> None:
        """Stop the running job between micro-batches and requeue it (worker shutdown)."""
        if self._beat is not None:
            self._beat.shutdown.set()
        if self._ranks is not None:
            self._ranks.stop()

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("fine-tuning worker %s ready for %s", self.worker_id, self.base.id)
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.config.poll_interval_s)

    def run_once(self) -> bool:
        """Recover stale jobs, then claim and run one job; False when none was queued."""
        jobs.recover_stale(self.db, self.config.heartbeat_timeout_s, self.config.max_attempts)
        job = jobs.claim(self.db, self.worker_id)
        if job is None:
            return False
        if self.nproc > 1:
            from ownllm.tuning.ranks import run_ranks

            run_ranks(self, job)
        else:
            self.run_job(job)
        return True

    def _state_dir(self, job_id: str, step: int) -> Path:
        """Where the resumable trainer state of a job's epoch checkpoint lives."""
        return self.data_dir.checkpoints / job_id / f"step-{step}"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ownllm.models.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_dir(self.base.path)
        return self._tokenizer

    def run_job(self, job: FineTuningJob, parallel=None) -> None:
        """Train `job`; on a rank other than 0 (`parallel`), train only: rank 0 reports."""
        parallel = parallel or Single()
        if not parallel.is_main:
            self._beat = RankFlags()
            try:
                self._train(job, self._beat, parallel)
            except (JobFailed, OwnLLMError):
                pass  # rank 0 met the same and failed the job
            finally:
                self._beat = None
            return
        beat = Heartbeat(self.db, job.id, self.worker_id, self.heartbeat_interval)
        beat.start()
        self._beat = beat
        resumed = " (resumed)" if job.attempts > 1 else ""
        ranks = f" on {parallel.world_size} ranks" if parallel.world_size > 1 else ""
        jobs.add_event(self.db, job.id, f"Fine-tuning job started{resumed}{ranks}.")
        try:
            self._train(job, beat, parallel)
        except JobFailed as e:
            self._fail(job.id, e.error)
        except OwnLLMError as e:
            self._fail(
                job.id,
                {"code": e.code or "invalid_request", "message": e.message, "param": e.param},
            )
        except Exception as e:  # the job fails, the worker lives on
            if parallel.world_size > 1 and _is_peer_loss(e):
                raise  # another rank died: the worker requeues the attempt
            log.exception("job %s failed", job.id)
            self._fail(
                job.id,
                {"code": "training_error", "message": f"{type(e).__name__}: {e}", "param": None},
            )
        finally:
            beat.done.set()
            self._beat = None

    def _fail(self, job_id: str, error: dict) -> None:
        if jobs.set_status(self.db, job_id, "failed", worker_id=self.worker_id, error=error):
            jobs.add_event(
                self.db, job_id, f"Fine-tuning job failed: {error['message']}", level="error"
            )

    def _load_data(self, job: FineTuningJob, is_main: bool = True):
        from ownllm.tuning.files import file_path

        max_len = self.config.max_seq_len
        out = []
        for file_id, param in (
            (job.training_file, "training_file"),
            (job.validation_file, "validation_file"),
        ):
            if not file_id:
                out.append(None)
                continue
            from ownllm.store.schema import File

            with self.db.session() as s:
                row = s.get(File, file_id)
            if row is None:
                raise JobFailed("invalid_file", f"File {file_id} no longer exists.", param)
            path = file_path(self.data_dir, row)
            try:
                if job.method == "dpo":
                    dataset = tokenize_pairs(
                        self.tokenizer, read_pairs(path, param=param), max_len, param=param
                    )
                else:
                    examples = read_examples(path, param=param)
                    dataset = tokenize(self.tokenizer, examples, max_len, param=param)
            except DataError as e:
                raise JobFailed(e.code or "invalid_file_format", e.message, e.param) from None
            for warning in dataset.warnings if is_main else ():
                jobs.add_event(self.db, job.id, warning, level="warn")
            out.append((dataset, {"file_id": row.id, "sha256": row.sha256}))
        return out

    def _parent(self, job: FineTuningJob) -> tuple[LoraSettings, dict, str] | None:
        if not job.parent_adapter_id:
            return None
        from ownllm.adapters.registry import adapter_path
        from ownllm.formats.peft import read_adapter, state_dict

        path = adapter_path(self.db, self.data_dir, job.parent_adapter_id)
        if path is None:
            raise JobFailed("model_not_found", f"The model {job.model} no longer exists.", "model")
        adapter = read_adapter(path)
        cfg = LoraSettings.from_peft_config(adapter.config)
        return cfg, state_dict(adapter.modules), job.parent_adapter_id

    def _train(self, job: FineTuningJob, beat, parallel) -> None:
        import torch

        from ownllm.tuning.model import TrainableModel
        from ownllm.tuning.objectives import Dpo, Supervised
        from ownllm.tuning.trainer import Cancelled, Trainer, TrainSettings, load_state

        if job.base_model != self.base.id:
            raise JobFailed(
                "model_not_available",
                f"This worker trains {self.base.id}, not {job.base_model}.",
                "model",
            )
        main = parallel.is_main
        (train, train_ref), valid_entry = self._load_data(job, main)
        validation, valid_ref = valid_entry if valid_entry else (None, None)
        hyper = resolve(job.hyperparameters or {}, len(train.examples), job.method)
        parent = self._parent(job)
        lora = (
            parent[0]
            if parent
            else LoraSettings(**{**job.lora, "target_modules": tuple(job.lora["target_modules"])})
        )
        # a continued adapter keeps its parent's shape; the base it trains on is the job's
        quantization = (job.lora or {}).get("base_quantization", "none")
        lora = dataclasses.replace(lora, base_quantization=quantization)
        if main:
            jobs.update_progress(
                self.db,
                job.id,
                self.worker_id,
                hyperparameters=hyper.to_dict(),
                lora=lora.to_dict(),
            )
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        model = TrainableModel.from_dir(self.base.path, lora)
        model.reset_lora(job.seed)
        if parent:
            model.load_lora_state(parent[1])
        settings = TrainSettings(
            hyper=hyper, seed=job.seed, max_batch_tokens=self.config.max_batch_tokens
        )
        # DPO's reference is the model as it starts: the base (adapter off) or the parent
        objective = Dpo(hyper.beta, reference_is_base=not parent) if job.method == "dpo" else None
        trainer = Trainer(model, train, settings, validation, objective or Supervised(), parallel)
        checkpoint = jobs.latest_checkpoint(self.db, job.id)
        if checkpoint is not None:
            state_file = self._state_dir(job.id, checkpoint.step) / "state.pt"
            if state_file.is_file():
                trainer.load_state(load_state(state_file))
                if main:
                    jobs.add_event(self.db, job.id, f"Resuming from step {checkpoint.step}.")
        if not main:
            with contextlib.suppress(Cancelled):
                trainer.run(beat)
            return
        name = fine_tuned_name(job)
        datasets = [train_ref] + ([valid_ref] if valid_ref else [])
        publish = Publisher(self, job, name, lora, hyper, datasets, parent[2] if parent else None)
        callbacks = Progress(self, job, trainer, beat, publish)
        try:
            result = trainer.run(callbacks)
        except Cancelled:
            if beat.lost.is_set():
                log.warning("job %s was taken from this worker; stopping", job.id)
                return
            if beat.shutdown.is_set() and not beat.cancelled.is_set():
                if jobs.release(self.db, job.id, self.worker_id):
                    jobs.add_event(self.db, job.id, "Worker stopping; job requeued.")
                return
            if jobs.set_status(self.db, job.id, "cancelled", worker_id=self.worker_id):
                jobs.add_event(self.db, job.id, "Fine-tuning job cancelled.")
            return
        publish.final(model, result)


class Progress:
    """Trainer callbacks: metrics events, progress on the job row, epoch checkpoints."""

    def __init__(self, worker: Worker, job: FineTuningJob, trainer, beat: Heartbeat, publish):
        self.worker, self.job, self.trainer, self.beat, self.publish = (
            worker,
            job,
            trainer,
            beat,
            publish,
        )
        self.history: list[dict] = []
        self.started = time.time()
        self.first_step = trainer.step

    def should_stop(self) -> bool:
        return self.beat.should_stop()

    def on_step(self, m: dict) -> None:
        self.history.append(m)
        done = m["step"] - self.first_step
        per_step = (time.time() - self.started) / max(1, done)
        eta = int(time.time() + per_step * (m["total_steps"] - m["step"]))
        message = f"Step {m['step']}/{m['total_steps']}: training loss={m['train_loss']:.4f}"
        if "train_reward_margin" in m:
            message += (
                f", reward margin={m['train_reward_margin']:.4f}"
                f", reward accuracy={m['train_reward_accuracy']:.2f}"
            )
        if "valid_loss" in m:
            message += f", validation loss={m['valid_loss']:.4f}"
        db, wid = self.worker.db, self.worker.worker_id
        jobs.add_event(db, self.job.id, message, data=m)
        jobs.update_progress(
            db, self.job.id, wid, trained_tokens=m["trained_tokens"], estimated_finish=eta
        )

    def on_epoch_end(self, epoch: int, step: int, state: dict, metrics: dict) -> None:
        if self.should_stop():
            return
        self.publish.checkpoint(epoch, step, state, metrics)


class Publisher:
    """Writes checkpoints and the final adapter through the registry (atomic, with lineage)."""

    def __init__(self, worker: Worker, job, name: str, lora, hyper, datasets, parent_id):
        self.worker, self.job, self.name, self.lora, self.hyper = worker, job, name, lora, hyper
        self.datasets, self.parent_id = datasets, parent_id

    def _register(self, state: dict, name: str, source: str, metrics: dict):
        from ownllm.adapters.registry import register_adapter
        from ownllm.formats.peft import PeftAdapter, modules_of, write_adapter

        w = self.worker
        tmp = w.data_dir.tmp / f"train-{uuid.uuid4().hex[:12]}"
        try:
            write_adapter(tmp, PeftAdapter(self.lora.peft_config(w.base.id), modules_of(state)))
            return register_adapter(
                w.db,
                w.data_dir,
                tmp,
                name=name,
                tenant_id=self.job.tenant_id,
                base_model=w.base.id,
                base_sha256=w.base.sha256,
                parents=[self.parent_id] if self.parent_id else [],
                source=source,
                datasets=self.datasets,
                hyperparameters={
                    **self.hyper.to_dict(),
                    "lora": self.lora.to_dict(),
                    "seed": self.job.seed,
                },
                metrics=metrics,
                base_dir=w.base.path,
            )
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    def checkpoint(self, epoch: int, step: int, state: dict, metrics: dict) -> None:
        from ownllm.tuning.trainer import save_state

        w = self.worker
        final = w._state_dir(self.job.id, step)
        if not final.exists():
            with w.data_dir.atomic_dir(final) as tmp:
                save_state(state, tmp / "state.pt")
        name = f"{self.name}:ckpt-step-{step}"
        from ownllm.adapters.registry import own_adapter

        # the job's tenant's own name: another tenant's adapter of that name is not this one
        record = own_adapter(w.db, self.job.tenant_id, name) or self._register(
            state["lora"], name, "checkpoint", _public_metrics(metrics)
        )
        jobs.add_checkpoint(w.db, self.job.id, step, name, record.id, _public_metrics(metrics))
        jobs.add_event(w.db, self.job.id, f"Checkpoint created at step {step} (epoch {epoch}).")

    def final(self, model, result) -> None:
        w = self.worker
        metrics = _public_metrics(result.metrics)
        record = self._register(model.lora_state(), self.name, "trained", metrics)
        results = _results_file(w, self.job)
        done = jobs.set_status(
            w.db,
            self.job.id,
            "succeeded",
            worker_id=w.worker_id,
            fine_tuned_model=self.name,
            trained_tokens=result.trained_tokens,
            result_files=[results],
        )
        if not done:  # cancelled or taken over at the last moment: leave nothing behind
            from ownllm.adapters.registry import delete_adapter

            delete_adapter(w.db, w.data_dir, ADMIN, record.id)
            return
        jobs.add_event(w.db, self.job.id, f"New fine-tuned model created: {self.name}")
        jobs.add_event(w.db, self.job.id, "The job has successfully completed.")


SFT_COLUMNS = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy")
DPO_COLUMNS = (
    "train_loss",
    "train_reward_margin",
    "train_reward_accuracy",
    "valid_loss",
    "valid_reward_margin",
    "valid_reward_accuracy",
)


def _is_peer_loss(e: Exception) -> bool:
    """A collective failed because another rank went away (gloo/NCCL say so this way)."""
    return type(e).__name__ in ("DistBackendError", "DistNetworkError") or (
        isinstance(e, RuntimeError) and ("Connection" in str(e) or "gloo" in str(e).lower())
    )


def _public_metrics(m: dict) -> dict:
    keys = ("step", *dict.fromkeys(SFT_COLUMNS + DPO_COLUMNS), "trained_tokens")
    return {k: m[k] for k in keys if k in m and not (isinstance(m[k], float) and math.isnan(m[k]))}


def _results_file(w: Worker, job: FineTuningJob) -> str:
    """The metrics CSV (every step, also those before a resume) as a fine-tune-results file."""
    from sqlalchemy import select

    from ownllm.store.schema import JobEvent
    from ownllm.tuning.files import save_bytes

    with w.db.session() as s:
        rows = s.scalars(
            select(JobEvent.data)
            .where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
            .order_by(JobEvent.seq)
        ).all()
    by_step = {m["step"]: m for m in rows if m}
    history = [by_step[k] for k in sorted(by_step)]

    out = io.StringIO()
    writer = csv.writer(out)
    columns = DPO_COLUMNS if job.method == "dpo" else SFT_COLUMNS
    header = ["step", *columns]
    if job.method != "dpo":
        header[2] = "train_accuracy"  # the name OpenAI's results file uses
    writer.writerow(header)
    for m in history:
        writer.writerow([m["step"], *(f"{m[c]:.6f}" if c in m else "" for c in columns)])
    row = save_bytes(
        w.db,
        w.data_dir,
        [out.getvalue().encode()],
        tenant_id=job.tenant_id,
        filename=f"{job.id}-metrics.csv",
        purpose="fine-tune-results",
    )
    return row.id
