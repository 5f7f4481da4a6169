import csv
import io
import json

import pytest

from ownllm.adapters.registry import list_adapters
from ownllm.formats.peft import read_adapter
from ownllm.gateway.auth import get_principal
from ownllm.gateway.principal import OPEN_DEV_PRINCIPAL, Principal
from tests.tuning.app_state import client_for, make_state, worker_for
from tests.tuning.conftest import REPLY, chat


@pytest.fixture
async def ft(tmp_path, learnable_model_dir, db_url):
    state = make_state(tmp_path, learnable_model_dir, db_url, max_seq_len=64)
    async with client_for(state) as client:
        client.state = state
        yield client
    state.db.close()


async def upload(client, records, name="train.jsonl") -> str:
    content = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()
    r = await client.post(
        "/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"}
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


PIRATE = [chat(f"question {i}", REPLY) for i in range(12)]


async def create(client, **body) -> dict:
    r = await client.post("/v1/fine_tuning/jobs", json={"model": "tiny", **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_job_trains_registers_the_adapter_with_lineage_and_reports_progress(ft):
    train = await upload(ft, PIRATE)
    valid = await upload(ft, PIRATE[:3], name="valid.jsonl")
    job = await create(
        ft,
        training_file=train,
        validation_file=valid,
        suffix="pirate",
        seed=7,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    assert (
        job["status"] == "queued" and job["hyperparameters"]["learning_rate_multiplier"] == "auto"
    )
    assert worker_for(ft.state).run_once()
    job = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == f"ft:tiny:@admin:pirate:{job['id']}"
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
    }
    assert job["trained_tokens"] > 0 and job["finished_at"] >= job["created_at"]

    events = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100")).json()["data"]
    steps = [e for e in events if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in steps] == [6, 5, 4, 3, 2, 1]  # newest first
    assert steps[-1]["message"].startswith("Step 1/6: training loss=")
    assert {"train_loss", "train_mean_token_accuracy"} <= set(steps[-1]["data"])
    assert "valid_loss" in steps[0]["data"] and "valid_mean_token_accuracy" in steps[0]["data"]

    checkpoints = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    assert [c["step_number"] for c in checkpoints] == [6, 3]
    assert checkpoints[1]["fine_tuned_model_checkpoint"] == job["fine_tuned_model"] + ":ckpt-step-3"

    (results,) = job["result_files"]
    text = (await ft.get(f"/v1/files/{results}/content")).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert (await ft.get(f"/v1/files/{results}")).json()["purpose"] == "fine-tune-results"

    adapters = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}
    final = adapters[job["fine_tuned_model"]]
    assert final.source == "trained" and final.base_model == "tiny"
    assert final.base_sha256 == "sha-tiny" and final.rank == 4
    assert [d["file_id"] for d in final.datasets] == [train, valid]
    assert final.hyperparameters["n_epochs"] == 2 and "train_loss" in final.metrics
    assert adapters[job["fine_tuned_model"] + ":ckpt-step-3"].source == "checkpoint"
    peft = read_adapter(ft.state.data_dir.resolve(final.path))
    assert sorted(peft.target_modules) == ["q_proj", "v_proj"]

    # continuing the ft: model trains its adapter further, with the parent in the lineage
    job2 = await create(
        ft, model=job["fine_tuned_model"], training_file=train, hyperparameters={"n_epochs": 1}
    )
    assert worker_for(ft.state).run_once()
    job2 = (await ft.get(f"/v1/fine_tuning/jobs/{job2['id']}")).json()
    assert job2["status"] == "succeeded", job2["error"]
    child = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}[
        job2["fine_tuned_model"]
    ]
    assert child.parents == (final.id,) and child.rank == 4


async def test_a_job_on_a_quantised_base_trains_and_records_the_base_it_used(ft):
    train = await upload(ft, PIRATE)
    lora = {"r": 4, "alpha": 8, "base_quantization": "q4_1"}
    job = await create(ft, training_file=train, hyperparameters={"n_epochs": 1}, lora=lora)
    assert job["lora"]["base_quantization"] == "q4_1"
    assert worker_for(ft.state).run_once()
    job = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["lora"]["base_quantization"] == "q4_1"
    adapters = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}
    final = adapters[job["fine_tuned_model"]]
    assert final.hyperparameters["lora"]["base_quantization"] == "q4_1" and final.rank == 4
    # continuing it on the full-precision base: the child's lineage says which base it saw
    job2 = await create(
        ft, model=job["fine_tuned_model"], training_file=train, hyperparameters={"n_epochs": 1}
    )
    assert worker_for(ft.state).run_once()
    job2 = (await ft.get(f"/v1/fine_tuning/jobs/{job2['id']}")).json()
    assert job2["status"] == "succeeded", job2["error"]
    child = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}[
        job2["fine_tuned_model"]
    ]
    assert child.hyperparameters["lora"]["base_quantization"] == "none"
    assert child.parents == (final.id,)


async def test_bad_data_fails_the_job_with_line_numbers(ft):
    lines = [json.dumps(r) for r in PIRATE]
    lines[4] = "{oops"
    lines[7] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    job = await create(ft, training_file=await upload(ft, lines))
    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == "invalid_file_format" and error["param"] == "training_file"
    assert "line 5: invalid JSON" in error["message"]
    assert "line 8: no assistant message" in error["message"]
    few = await create(ft, training_file=await upload(ft, PIRATE[:3]))
    assert few["status"] == "failed" and few["error"]["code"] == "invalid_n_examples"


async def test_request_errors_name_the_field(ft):
    train = await upload(ft, PIRATE)
    cases = [
        ({"model": "nope", "training_file": train}, 404, "model"),
        ({"training_file": "file-missing"}, 400, "training_file"),
        (
            {"training_file": train, "hyperparameters": {"n_epochs": 0}},
            400,
            "hyperparameters.n_epochs",
        ),
        (
            {"training_file": train, "hyperparameters": {"batch_size": "big"}},
            400,
            "hyperparameters.batch_size",
        ),
        ({"training_file": train, "lora": {"target_modules": ["fc1"]}}, 400, "lora.target_modules"),
        ({"training_file": train, "lora": {"r": 0}}, 400, "lora.r"),
        (
            {"training_file": train, "lora": {"base_quantization": "q2_k"}},
            400,
            "lora.base_quantization",
        ),
        (
            {"training_file": train, "lora": {"base_quantization": [4]}},
            400,
            "lora.base_quantization",
        ),
        (
            {"training_file": train, "method": {"supervised": {"hyperparameters": [None]}}},
            400,
            "method.supervised.hyperparameters",
        ),
    ]
    for body, status, param in cases:
        r = await ft.post("/v1/fine_tuning/jobs", json={"model": "tiny", **body})
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())


async def test_cancel_and_tenant_isolation(ft):
    train = await upload(ft, PIRATE)
    job = await create(ft, training_file=train)
    r = await ft.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert not worker_for(ft.state).run_once()  # nothing left to run
    assert (await ft.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")).status_code == 400

    ft._transport.app.dependency_overrides[get_principal] = lambda: Principal(tenant_id="other")
    assert (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}")).status_code == 404
    assert (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).status_code == 404
    assert (await ft.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")).status_code == 404
    assert (await ft.get("/v1/fine_tuning/jobs")).json()["data"] == []
    r = await ft.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"


async def test_list_jobs_is_newest_first_with_a_cursor(ft):
    train = await upload(ft, PIRATE)
    ids = [(await create(ft, training_file=train))["id"] for _ in range(3)]
    page = (await ft.get("/v1/fine_tuning/jobs?limit=2")).json()
    assert [j["id"] for j in page["data"]] == ids[:0:-1] and page["has_more"]
    rest = (await ft.get(f"/v1/fine_tuning/jobs?after={ids[1]}")).json()
    assert [j["id"] for j in rest["data"]] == ids[:1] and not rest["has_more"]


async def test_training_is_metered_for_the_key_that_created_the_job(ft):
    from ownllm.gateway.usage import summarize

    acme = Principal(tenant_id="acme", key_id="key-acme")
    ft._transport.app.dependency_overrides[get_principal] = lambda: acme
    train = await upload(ft, PIRATE)
    job = await create(ft, training_file=train, hyperparameters={"n_epochs": 2, "batch_size": 4})
    assert worker_for(ft.state).run_once()
    job = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    (row,) = summarize(ft.state.db, by="key")
    assert row["key"] == "key-acme" and row["requests"] == 1 and row["ok"] == 1
    assert row["trained_tokens"] == job["trained_tokens"] > 0  # both epochs
    assert row["total_tokens"] == 0 and row["mean_latency_ms"] is None  # not inference
    (by_endpoint,) = summarize(ft.state.db, by="endpoint", tenant_id="acme")
    assert by_endpoint["endpoint"] == "fine_tuning.jobs"
