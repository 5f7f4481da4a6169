"""OpenAI's own published spec against the real server: every answer is one OpenAI's could be.

Schemathesis reads OpenAI's OpenAPI document (`../shared/openai-openapi/openapi.yaml`,
beside the repository) and sends its requests to each operation ownllm implements: the
examples, the coverage phase's boundary values, then a few fuzzed ones, with a fixed
seed and one worker. It checks that no request makes a 5xx and that each answer the spec
documents (the 200s) matches OpenAI's schema. `openai_spec_hooks.py` aims the requests
at objects made here first and at the served models, so 200s come back to be checked.

Skips, with the reason, where `../shared` is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN_KEY

SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "openai-openapi" / "openapi.yaml"
HOOKS = Path(__file__).with_name("openai_spec_hooks.py")
MAX_EXAMPLES = 10
SEED = 4

# The spec's operations that ownllm serves. Left out, as ownllm has no such operation:
# deleteModel (fine-tuned models are deleted as adapters, DELETE /v1/adapters/{ref}),
# pauseFineTuningJob / resumeFineTuningJob, and cancelResponse, getInputTokenCounts and
# compactConversation (no background responses, token counting or compaction).
OPERATIONS = [
    "createChatCompletion", "listChatCompletions", "getChatCompletion", "updateChatCompletion",
    "deleteChatCompletion", "getChatCompletionMessages",
    "createCompletion",
    "createEmbedding",
    "listModels", "retrieveModel",
    "createFile", "listFiles", "retrieveFile", "downloadFile", "deleteFile",
    "createFineTuningJob", "listPaginatedFineTuningJobs", "retrieveFineTuningJob",
    "cancelFineTuningJob", "listFineTuningEvents", "listFineTuningJobCheckpoints",
    "createResponse", "getResponse", "deleteResponse", "listInputItems",
    "createBatch", "listBatches", "retrieveBatch", "cancelBatch",
    "createVectorStore", "listVectorStores", "getVectorStore", "modifyVectorStore",
    "deleteVectorStore", "searchVectorStore",
    "createVectorStoreFile", "listVectorStoreFiles", "getVectorStoreFile",
    "updateVectorStoreFileAttributes", "deleteVectorStoreFile", "retrieveVectorStoreFileContent",
    "createVectorStoreFileBatch", "getVectorStoreFileBatch", "cancelVectorStoreFileBatch",
    "listFilesInVectorStoreBatch",
]  # fmt: skip

CONFIG = """
# No learning from answers: each request depends on the seed alone, never on the ids or
# text an earlier answer happened to carry.
[phases.examples]
extra-data-sources.responses = false

[phases.coverage]
extra-data-sources.responses = false

[phases.fuzzing]
extra-data-sources.responses = false
error-feedback.enabled = false

# The coverage phase's negative cases for chat (every way to break each field of its
# large request schema) take schemathesis minutes to build; its positive boundary values
# and the fuzzed requests of both kinds still run.
[[operations]]
include-operation-id = "createChatCompletion"
phases.coverage.generation.mode = "positive"
"""

TRAINING = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                             {"role": "assistant", "content": "a"}]}).encode() + b"\n"
    for i in range(10)
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    not SPEC.exists(), reason=f"OpenAI's spec is not at {SPEC} (a copy of `shared` beside the repo)"
)


@pytest.fixture(scope="module")
def api(fuzz_server):
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=f"{fuzz_server.base_url}/v1", headers=headers, timeout=60) as c:
        yield c


def _id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def objects(api) -> dict[str, str]:
    """A file, a stored completion, a job, a stored response, a batch (and its input
    file) and a vector store (with a text file in it and a file batch) for the spec's
    requests, and one more of each for the requests that delete or cancel theirs."""

    def upload() -> str:
        files = {"file": ("train.jsonl", TRAINING)}
        return _id(api.post("/files", files=files, data={"purpose": "fine-tune"}))

    def stored() -> str:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4, "store": True}  # fmt: skip
        return _id(api.post("/chat/completions", json=body))

    def response() -> str:
        body = {"model": "tiny", "input": "Hi", "max_output_tokens": 4}
        return _id(api.post("/responses", json=body))

    def batch(file_id: str) -> str:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}  # fmt: skip
        return _id(api.post("/batches", json=body))

    file_id = upload()
    job = {"model": "tiny", "training_file": file_id}  # the worker is off: jobs stay queued
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                     "max_tokens": 2}}  # fmt: skip
    files = {"file": ("batch.jsonl", json.dumps(line).encode() + b"\n")}
    batch_file = _id(api.post("/files", files=files, data={"purpose": "batch"}))
    text = {"file": ("notes.txt", b"The rocket launch is planned for the fourth of May.")}
    text_file = _id(api.post("/files", files=text, data={"purpose": "assistants"}))
    removed_file = _id(api.post("/files", files=text, data={"purpose": "assistants"}))
    store = _id(api.post("/vector_stores", json={"name": "notes", "file_ids": [text_file]}))
    api.post(f"/vector_stores/{store}/files", json={"file_id": removed_file}).raise_for_status()

    def file_batch() -> str:
        return _id(api.post(f"/vector_stores/{store}/file_batches", json={"file_ids": [text_file]}))

    return {
        "text_file": text_file,
        "vector_store": store,
        "deleted_vector_store": _id(api.post("/vector_stores", json={"name": "gone"})),
        "store_file": text_file,
        "removed_store_file": removed_file,
        "file_batch": file_batch(),
        "cancelled_file_batch": file_batch(),
        "batch_file": batch_file,
        "batch": batch(batch_file),
        "cancelled_batch": batch(batch_file),
        "file": file_id,
        "deleted_file": upload(),
        "completion": stored(),
        "deleted_completion": stored(),
        "job": _id(api.post("/fine_tuning/jobs", json=job)),
        "cancelled_job": _id(api.post("/fine_tuning/jobs", json=job)),
        "response": response(),
        "deleted_response": response(),
        "model": "tiny",
        "embedding_model": "all-minilm-l6-v2",
    }


@pytest.mark.slow
def test_answers_match_openais_spec(fuzz_server, objects, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    command = str(cli) if cli.exists() else shutil.which("schemathesis")
    if command is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    operations = [arg for op in OPERATIONS for arg in ("--include-operation-id", op)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "OWNLLM_SPEC_IDS": json.dumps(objects)}
    done = subprocess.run(
        [
            command, "--config-file", str(config), "run", str(SPEC),
            "--url", f"{fuzz_server.base_url}/v1",
            "-H", f"Authorization: Bearer {ADMIN_KEY}",
            *operations,
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--generation-database", "none",
            # one worker: hypothesis reads lambda sources with `ast`, which is not
            # thread-safe in CPython 3.11 (random SystemError/KeyError with two)
            "--workers", "1",
            "--request-timeout", "60",
            "--suppress-health-check", "all",
            "--no-color",
            "--report-dir", str(tmp_path / "report"),
        ],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    summary = done.stdout.split("SUMMARY")[-1]
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert f"Tested: {len(OPERATIONS)}" in summary, summary
    assert " generated, " in summary and " failed" not in summary, summary


@pytest.fixture(scope="module")
def spec_schema():
    """`name` -> a validator for that schema of the spec's components."""
    import jsonschema
    import yaml

    spec = json.loads(json.dumps(yaml.load(SPEC.read_text(), yaml.CSafeLoader), default=str))
    components = _without_nullable(spec["components"])
    return lambda name: jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": components}
    )


def _errors(validator, instance) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2,
        "logprobs": True, "top_logprobs": 2}  # fmt: skip
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 3, "n": 2, "logprobs": 2}


@pytest.mark.parametrize(
    ("path", "body", "schema"),
    [
        ("/chat/completions", CHAT, "CreateChatCompletionResponse"),
        ("/completions", COMPLETION, "CreateCompletionResponse"),
    ],
)
def test_logprobs_and_choices_match_openais_spec(api, spec_schema, path, body, schema):
    """The parts the run above seldom reaches with a 200: several choices with logprobs."""
    response = api.post(path, json=body)
    assert response.status_code == 200, response.text
    assert not _errors(spec_schema(schema), response.json())


def test_streamed_chunks_match_openais_spec(api, spec_schema):
    """Each `data:` of a chat stream is a chunk object, then `[DONE]`; the usage chunk too.

    (The spec documents no stream for legacy completions.)"""
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with api.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        data = [line[len("data: ") :] for line in response.iter_lines() if line]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["usage"] is not None and chunks[-1]["choices"] == []
    validator = spec_schema("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        assert not _errors(validator, chunk), chunk


RESPONSE = {"model": "tiny", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 3,
            "metadata": {"k": "v"}}  # fmt: skip


EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}


def test_responses_and_their_events_match_openais_spec(api, spec_schema):
    """A response (incomplete: max_output_tokens), each event of its stream (`data:` only,
    no [DONE]), the stored copy and its input items, as OpenAI's spec describes them."""
    created = api.post("/responses", json=RESPONSE)
    assert created.status_code == 200, created.text
    assert not _errors(spec_schema("Response"), created.json())
    with api.stream("POST", "/responses", json={**RESPONSE, "stream": True}) as response:
        assert response.status_code == 200
        data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data")]
    events = [json.loads(d) for d in data]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.incomplete"
    for event in events:  # each against its own schema: the union's error says nothing
        name = EVENT_SCHEMAS[event["type"]]
        assert not _errors(spec_schema(name), event), event
        assert not _errors(spec_schema("ResponseStreamEvent"), event), event
    rid = events[-1]["response"]["id"]
    assert not _errors(spec_schema("Response"), api.get(f"/responses/{rid}").json())
    items = api.get(f"/responses/{rid}/input_items").json()
    assert not _errors(spec_schema("ResponseItemList"), items), items


def _without_nullable(schema):
    """OpenAPI 3.0's `nullable: true`, which the spec still uses, in JSON Schema's words."""
    if isinstance(schema, list):
        return [_without_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _without_nullable(value) for key, value in schema.items() if key != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if schema.get("nullable") is True else out
