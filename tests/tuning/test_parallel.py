"""Data-parallel training on torch.distributed (gloo, CPU): two ranks train one rank's adapter;
a multi-rank job is claimed once; losing a rank requeues it from its last checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
import torch
import torch.multiprocessing as mp

from ownllm.models.tokenizer import Tokenizer
from ownllm.tuning import jobs
from ownllm.tuning.data import read_examples, tokenize
from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
from ownllm.tuning.model import TrainableModel
from ownllm.tuning.objectives import Dpo
from ownllm.tuning.parallel import init_group, leave_group
from ownllm.tuning.preferences import read_pairs, tokenize_pairs
from ownllm.tuning.trainer import Trainer, TrainSettings
from tests.api.test_fine_tuning import PIRATE, upload
from tests.tuning.app_state import client_for, make_state, worker_for
from tests.tuning.conftest import PAIRS, write_jsonl
from tests.tuning.test_worker_process import assert_registry_sound, messages, wait_for

TOLERANCE = 1e-5


def _train_both(model_dir, chat_path, pairs_path, parallel=None) -> dict[str, torch.Tensor]:
    """An SFT run then a DPO run (fp32, global batch 4); both adapters' tensors."""
    tok = Tokenizer.from_dir(model_dir)
    out = {}
    for name, data, objective in (
        ("sft", tokenize(tok, read_examples(chat_path), max_len=128), None),
        ("dpo", tokenize_pairs(tok, read_pairs(pairs_path), max_len=128), Dpo(0.1)),
    ):
        model = TrainableModel.from_dir(model_dir, LoraSettings(), dtype=torch.float32)
        model.reset_lora(0)
        settings = TrainSettings(Hyperparameters(1, 4, 1.0), seed=0)
        Trainer(model, data, settings, objective=objective, parallel=parallel).run()
        out.update({f"{name}/{k}": v for k, v in model.lora_state().items()})
    return out


def _rank(rank, world, address, model_dir, chat_path, pairs_path, out_path) -> None:
    torch.set_num_threads(1)
    parallel = init_group(rank, world, address)
    try:
        state = _train_both(model_dir, chat_path, pairs_path, parallel)
        if rank == 0:
            torch.save(state, out_path)
    finally:
        leave_group()


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_two_ranks_train_the_same_adapter_as_one(learnable_model_dir, reply_file, tmp_path):
    pairs_path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    one = _train_both(learnable_model_dir, reply_file, pairs_path)
    out = tmp_path / "two.pt"
    args = (2, _free_address(), learnable_model_dir, reply_file, pairs_path, out)
    mp.start_processes(_rank, args=args, nprocs=2, start_method="spawn")
    two = torch.load(out, weights_only=True)
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] - two[key]).abs().max() < TOLERANCE, key
    # trained, not the initial adapter: B left zero
    assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 1e-3


def _job(state, hyperparameters: dict) -> str:
    import asyncio

    async def create() -> str:
        async with client_for(state) as client:
            train = await upload(client, PIRATE)
            r = await client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "tiny", "training_file": train, "seed": 1,
                      "hyperparameters": hyperparameters},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()["id"]

    return asyncio.run(create())


def _ranked_worker(state, nproc: int):
    worker = worker_for(state)
    worker.nproc = nproc
    return worker


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_two_rank_job_is_claimed_once_and_rank_0_publishes(tmp_path, learnable_model_dir, db_url):
    state = make_state(tmp_path, learnable_model_dir, db_url)
    job_id = _job(state, {"n_epochs": 2, "batch_size": 4})
    assert _ranked_worker(state, 2).run_once()
    job = jobs.get_job(state.db, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1
    log = messages(state.db, job_id)
    assert log.count("Fine-tuning job started on 2 ranks.") == 1
    assert [m.split(":")[0] for m in log if m.startswith("Step ")] == [f"Step {k}/6" for k in
                                                                       range(1, 7)]  # fmt: skip
    assert sum(m.startswith("Checkpoint created") for m in log) == 2  # once per epoch
    assert job.fine_tuned_model in assert_registry_sound(state)
    assert not _ranked_worker(state, 2).run_once()  # nothing left to claim
    state.db.close()


def _stopped_with_checkpoint(worker, db, job_id):
    """Stop every rank (SIGSTOP), then look: the job's latest checkpoint, the ranks left
    stopped; or None, the ranks let go on."""
    ranks = worker._ranks
    if ranks is None:
        return None
    pids = ranks.pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    checkpoint = jobs.latest_checkpoint(db, job_id)
    if checkpoint is None:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        return None
    return pids


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_killed_rank_requeues_the_job_which_resumes_on_one_rank(
    tmp_path, learnable_model_dir, db_url
):
    state = make_state(tmp_path, learnable_model_dir, db_url)
    # 6 steps an epoch, 36 in all: the ranks run 10 ms at a time between looks
    job_id = _job(state, {"n_epochs": 6, "batch_size": 2})
    worker = _ranked_worker(state, 2)
    running = threading.Thread(target=worker.run_once)
    running.start()
    try:
        rank0, rank1 = wait_for(
            lambda: _stopped_with_checkpoint(worker, state.db, job_id), poll_s=0.01
        )
        killed_at = jobs.latest_checkpoint(state.db, job_id).step
        os.kill(rank1, signal.SIGKILL)
        os.kill(rank0, signal.SIGCONT)
    finally:
        running.join(timeout=120)
    assert not running.is_alive()
    job = jobs.get_job(state.db, job_id)
    assert job.status == "queued" and job.attempts == 1 and job.worker_id is None
    lost = [m for m in messages(state.db, job_id) if m.startswith("Training rank")]
    assert len(lost) == 1 and lost[0].endswith("; job requeued to resume from its last checkpoint.")
    assert job.fine_tuned_model is None

    assert _ranked_worker(state, 1).run_once()  # the checkpoint loads onto any number of ranks
    job = jobs.get_job(state.db, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    resumed = [m for m in messages(state.db, job_id) if m.startswith("Resuming from step ")]
    assert resumed and int(resumed[0].split()[-1].rstrip(".")) >= killed_at
    assert job.fine_tuned_model in assert_registry_sound(state)
    state.db.close()
