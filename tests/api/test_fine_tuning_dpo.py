"""`method: {"type": "dpo"}` through the fine-tuning API: validation, a job, its metrics."""

import csv
import io

from ownllm.adapters.registry import list_adapters
from ownllm.gateway.principal import OPEN_DEV_PRINCIPAL
from tests.api.test_fine_tuning import PIRATE, create, ft, upload  # noqa: F401 (fixture)
from tests.tuning.app_state import worker_for
from tests.tuning.conftest import OTHER, PAIRS, REPLY, pair


def dpo(**hyperparameters) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


async def test_method_errors_name_the_field(ft):  # noqa: F811
    train = await upload(ft, PAIRS)
    cases = [
        ({"type": "rlhf"}, "method.type"),
        ("dpo", "method"),
        ({"type": "dpo", "dpo": []}, "method.dpo"),
        ({"type": "dpo", "supervised": {}}, "method.supervised"),
        (dpo(beta=0), "method.dpo.hyperparameters.beta"),
        (dpo(beta="high"), "method.dpo.hyperparameters.beta"),
        (dpo(n_epochs=0), "method.dpo.hyperparameters.n_epochs"),
        (dpo(gamma=1), "method.dpo.hyperparameters.gamma"),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}},
            "method.supervised.hyperparameters.beta",
        ),  # fmt: skip
    ]
    for method, param in cases:
        r = await ft.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train, "method": method}
        )
        assert r.status_code == 400, (method, r.text)
        error = r.json()["error"]
        assert error["param"] == param, (method, error)
        assert error["type"] == "invalid_request_error" and error["message"]


async def test_a_dpo_job_with_chat_data_fails_naming_the_line(ft):  # noqa: F811
    job = await create(ft, training_file=await upload(ft, PIRATE), method=dpo())
    assert job["status"] == "failed" and job["method"]["type"] == "dpo"
    error = job["error"]
    assert error["code"] == "invalid_file_format" and error["param"] == "training_file"
    assert "line 1: a chat example where a preference pair is expected" in error["message"]
    # and a supervised job refuses preference data the same way
    job = await create(ft, training_file=await upload(ft, PAIRS))
    assert job["status"] == "failed" and "line 1: missing 'messages'" in job["error"]["message"]


async def test_a_dpo_job_trains_reports_reward_metrics_and_registers_the_adapter(ft):  # noqa: F811
    train = await upload(ft, PAIRS)
    valid = await upload(ft, [pair("held out", REPLY, OTHER)], name="valid.jsonl")
    job = await create(
        ft,
        training_file=train,
        validation_file=valid,
        suffix="prefs",
        seed=1,
        method=dpo(n_epochs=2, batch_size=4, beta=0.2),
    )
    assert job["status"] == "queued"
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto", "beta": 0.2}}}  # fmt: skip
    assert worker_for(ft.state).run_once()
    job = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.2, "beta": 0.2}  # fmt: skip

    events = (await ft.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100")).json()["data"]
    steps = [e for e in events if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in steps] == [6, 5, 4, 3, 2, 1]
    assert steps[-1]["message"].startswith("Step 1/6: training loss=0.69")
    assert ", reward margin=" in steps[-1]["message"]
    assert {"train_loss", "train_reward_margin", "train_reward_accuracy"} <= set(steps[0]["data"])
    assert {"valid_loss", "valid_reward_margin", "valid_reward_accuracy"} <= set(steps[0]["data"])

    (results,) = job["result_files"]
    rows = list(csv.DictReader(io.StringIO((await ft.get(f"/v1/files/{results}/content")).text)))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert set(rows[0]) == {"step", "train_loss", "train_reward_margin", "train_reward_accuracy",
                            "valid_loss", "valid_reward_margin", "valid_reward_accuracy"}  # fmt: skip
    # the first step's policy is the reference: loss ln 2 (to bf16 rounding)
    assert abs(float(rows[0]["train_loss"]) - 0.693147) < 5e-3 and rows[-1]["valid_loss"]

    adapters = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}
    final = adapters[job["fine_tuned_model"]]
    assert final.source == "trained" and final.hyperparameters["beta"] == 0.2
    assert "train_reward_accuracy" in final.metrics

    # preference-tune that ft: model further: its adapter is the parent
    job2 = await create(ft, model=job["fine_tuned_model"], training_file=train,
                        method=dpo(n_epochs=1))  # fmt: skip
    assert worker_for(ft.state).run_once()
    job2 = (await ft.get(f"/v1/fine_tuning/jobs/{job2['id']}")).json()
    assert job2["status"] == "succeeded", job2["error"]
    child = {a.name: a for a in list_adapters(ft.state.db, OPEN_DEV_PRINCIPAL)}[
        job2["fine_tuned_model"]
    ]
    assert child.parents == (final.id,)
