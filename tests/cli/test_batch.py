"""`ownllm batch` against a live app (uvicorn on loopback, its batch worker running) over a
ScriptedBackend: submit --wait shows progress and writes the output and error files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ownllm.api.app import create_app
from ownllm.backends.scripted import counting_backend
from ownllm.cli import main
from ownllm.models.tokenizer import Tokenizer
from tests.server import serve_app
from tests.tenants import gateway_state


@pytest.fixture
def live(tmp_path, tiny_model_dir, two_tenants):
    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    state = gateway_state(tmp_path, two_tenants, backend=counting_backend(tokenizer))
    state.tokenizer = tokenizer
    batch = replace(state.config.batch, poll_interval_s=0.05)
    state.config = replace(state.config, batch=batch)
    with serve_app(create_app(state, start_engine=False)) as url:
        yield f"{url}/v1", two_tenants.a.key, state


def line(custom_id: str, model: str, **body) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            **body}  # fmt: skip
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(item) + "\n"


def test_submit_wait_writes_the_output_and_error_files(live, tmp_path, capsys):
    url, key, state = live
    requests = tmp_path / "requests.jsonl"
    requests.write_text(line("a", state.model_id) + line("b", "no-such-model"))
    code = main(["batch", "submit", str(requests), "--endpoint", "/v1/chat/completions",
                 "--wait", "--poll", "0.05", "--metadata", "run=1", "--base-url", url,
                 "--api-key", key])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "validating" in out.splitlines()[0]
    assert "completed   2/2 (1 failed)" in out
    output = [json.loads(x) for x in (tmp_path / "requests.output.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "requests.errors.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in output] == ["a"]
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "tok0 tok1 "
    assert [(x["custom_id"], x["response"]["status_code"]) for x in errors] == [("b", 404)]
    batch_id = out.split()[0]
    code = main(["batch", "show", batch_id, "--base-url", url, "--api-key", key])
    assert code == 0 and "completed" in capsys.readouterr().out
    code = main(["batch", "list", "--base-url", url, "--api-key", key])
    assert code == 0 and batch_id in capsys.readouterr().out


def test_submit_of_a_bad_file_fails_naming_the_line(live, tmp_path, capsys):
    url, key, _ = live
    requests = tmp_path / "bad.jsonl"
    requests.write_text("{oops\n")
    code = main(["batch", "submit", str(requests), "--endpoint", "/v1/chat/completions",
                 "--wait", "--poll", "0.05", "--base-url", url, "--api-key", key])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "error: line 1: invalid_json_line" in captured.err
    code = main(["batch", "cancel", "batch_nope", "--base-url", url, "--api-key", key])
    assert code == 1 and "404" in capsys.readouterr().err
