"""Schemathesis hooks for the run against OpenAI's spec: requests that reach real objects.

Generated from OpenAI's spec alone, every id is unknown here (a 404, which the spec does
not describe, so nothing is checked) and every model name is OpenAI's (a 404 too). Just
before each call these hooks point ids at objects the test created and models at the
served ones, so 200s come back and their bodies are checked against the spec. Deleting
and cancelling get objects of their own, so the other operations still find theirs.
Lengths are capped to keep the tiny model's generations short.

The test passes the ids as JSON in OWNLLM_SPEC_IDS.
"""

from __future__ import annotations

import json
import os

import schemathesis

IDS: dict[str, str] = json.loads(os.environ.get("OWNLLM_SPEC_IDS", "{}"))
OWN_OBJECT = {  # operations that use up the object they name
    "deleteChatCompletion": "deleted_completion",
    "deleteFile": "deleted_file",
    "cancelFineTuningJob": "cancelled_job",
    "deleteResponse": "deleted_response",
    "cancelBatch": "cancelled_batch",
}
PATH_OBJECT = {"completion_id": "completion", "file_id": "file", "fine_tuning_job_id": "job",
               "response_id": "response", "batch_id": "batch"}  # fmt: skip
# The vector store operations (their id says VectorStore): the store, a file in it and a
# file batch of it; deleting and cancelling get their own, as above.
STORE_PATH_OBJECT = {"vector_store_id": "vector_store", "file_id": "store_file",
                     "batch_id": "file_batch"}  # fmt: skip
STORE_OWN_OBJECT = {
    ("deleteVectorStore", "vector_store_id"): "deleted_vector_store",
    ("deleteVectorStoreFile", "file_id"): "removed_store_file",
    ("cancelVectorStoreFileBatch", "batch_id"): "cancelled_file_batch",
}
MODEL = {"createEmbedding": "embedding_model"}
MAX_TOKENS, MAX_CHOICES = 4, 2
# Fields left out, so the rest of a body that uses them still gets an answer to check:
# those ownllm answers with a 400 naming them, as it does not do what they ask (insertion,
# best_of other than n), and `tools`, whose fallback-format block (~400 tokens) the fuzzing
# server's 128-token context cannot hold (test_openai_spec_tools.py checks calls instead).
REFUSED_BY_DESIGN = ("tools", "suffix", "best_of")
VOCAB = 512  # the tiny model's: logit_bias keys are aimed at its token ids
# The same for the Responses API: fields it refuses by name (a built-in tool, reasoning,
# background work, …), and `include`, which asks for outputs only OpenAI makes.
REFUSED_BY_RESPONSES = ("background", "conversation", "prompt", "reasoning", "include",
                        "top_logprobs", "max_tool_calls", "context_management", "moderation",
                        "prompt_cache_options", "image", "truncation", "service_tier",
                        "stream_options")  # fmt: skip


@schemathesis.hook
def before_load_schema(context, raw_schema) -> None:
    """Read each event-stream `schema` as the spec means it: the JSON in one event's `data`.

    Before OpenAPI 3.2 there was no way to say so, and schemathesis would check the parsed
    event (`{"data": "…", "event": …}`) itself; 3.2's `itemSchema` says it exactly."""
    for path in raw_schema.get("paths", {}).values():
        for operation in path.values():
            for response in (
                (operation.get("responses") or {}).values() if isinstance(operation, dict) else ()
            ):
                stream = (response.get("content") or {}).get("text/event-stream")
                if stream and "schema" in stream:
                    chunk = {
                        "contentMediaType": "application/json",
                        "contentSchema": stream.pop("schema"),
                    }
                    data = {"if": {"const": "[DONE]"}, "else": chunk}  # the stream's last event
                    stream["itemSchema"] = {"type": "object", "properties": {"data": data}}


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    operation_id = case.operation.definition.raw.get("operationId", "")
    for name in list(case.path_parameters or {}):
        if "VectorStore" in operation_id and name in STORE_PATH_OBJECT:
            own = STORE_OWN_OBJECT.get((operation_id, name), STORE_PATH_OBJECT[name])
            case.path_parameters[name] = IDS[own]
        elif name in PATH_OBJECT:
            case.path_parameters[name] = IDS[OWN_OBJECT.get(operation_id, PATH_OBJECT[name])]
        elif name == "model":
            case.path_parameters[name] = IDS["model"]
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = IDS[MODEL.get(operation_id, "model")]
    # Pairs OpenAI refuses too, which the spec cannot say: without them a generated body
    # that sets every field never gets past validation.
    for name, needs in (("stream_options", "stream"), ("top_logprobs", "logprobs")):
        if body.get(needs) is not True:
            body.pop(name, None)
    for name in REFUSED_BY_DESIGN:
        body.pop(name, None)
    if isinstance(body.get("logit_bias"), dict):  # the spec's keys are any string
        body["logit_bias"] = {
            str(i * 37 % VOCAB): max(-100, min(100, v)) if isinstance(v, int | float) else v
            for i, v in enumerate(body["logit_bias"].values())
        }
    for name in ("training_file", "validation_file"):
        if isinstance(body.get(name), str):
            body[name] = IDS["file"]  # a fine-tune file
    if operation_id == "createResponse":
        _aim_response(body)
    if "VectorStore" in operation_id:
        _aim_store(body)
    if isinstance(body.get("input_file_id"), str):
        body["input_file_id"] = IDS["batch_file"]  # a batch input file
    if operation_id in ("createChatCompletion", "createCompletion"):
        body.setdefault("max_tokens", MAX_TOKENS)  # else: the rest of the context
    for name, cap in (("max_tokens", MAX_TOKENS), ("max_completion_tokens", MAX_TOKENS),
                      ("n", MAX_CHOICES)):  # fmt: skip
        if isinstance(body.get(name), int) and body[name] > cap:
            body[name] = cap


def _aim_response(body: dict) -> None:
    """A createResponse body that reaches the model: refused fields out, text input (the
    spec's items are mostly images, files and built-in tool calls), the stored response
    as the one to continue, few output tokens."""
    for name in REFUSED_BY_RESPONSES:
        body.pop(name, None)
    if not isinstance(body.get("input"), str) or not body["input"]:
        body["input"] = "Hi"
    if isinstance(body.get("previous_response_id"), str):
        body["previous_response_id"] = IDS["response"]
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        text.pop("format")  # a fuzzed schema: a grammar that may never close
    if not isinstance(body.get("max_output_tokens"), int) or body["max_output_tokens"] > 4:
        body["max_output_tokens"] = MAX_TOKENS


def _aim_store(body: dict) -> None:
    """A vector store body that names files of this tenant (the text file made for them),
    so the store, attach and batch operations answer 200s to check."""
    if isinstance(body.get("file_id"), str):
        body["file_id"] = IDS["text_file"]
    if isinstance(body.get("file_ids"), list):
        body["file_ids"] = [IDS["text_file"] for _ in body["file_ids"][:2]]
    if isinstance(body.get("files"), list):  # file_batches' per-file form
        body["files"] = [
            {**f, "file_id": IDS["text_file"]} if isinstance(f, dict) else f
            for f in body["files"][:2]
        ]


# Where the spec contradicts OpenAI's own answers, ownllm answers as OpenAI does:
# (operationId, end of the schema path) -> the values the spec refuses there.
SPEC_ERRATA = {
    # The messages list reuses the schema of a *response* message (role "assistant"
    # only), but it lists the request's messages: the spec's own example has role
    # "user", and the official client does not check the role.
    ("getChatCompletionMessages", ("role", "enum")): {"system", "user"},
    # Uploads accept purpose "evals", but the file object's enum leaves it out; a file
    # says the purpose it was uploaded with, as OpenAI's do.
    **{(op, ("purpose", "enum")): {"evals"} for op in ("createFile", "listFiles", "retrieveFile")},
}


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    operation_id = case.operation.definition.raw.get("operationId", "")
    # deleteResponse documents its 404 body as the bare error object; OpenAI's 404s (and
    # every other one the spec documents) wrap it in {"error": …}, which the client reads.
    if operation_id == "deleteResponse" and response.status_code == 404:
        return False
    # ItemResource's discriminator has no mapping, so schemathesis takes the schema names
    # ("InputMessageResource") for `type` values; OpenAI's items say "message", as the
    # spec's own example does. The items are checked against the schema's oneOf in
    # test_openai_spec.py::test_responses_and_their_events_match_openais_spec.
    if operation_id == "listInputItems" and type(failure).__name__ == "DiscriminatorMismatch":
        return False
    tail = tuple(getattr(failure, "schema_path", ())[-2:])
    return getattr(failure, "instance", None) not in SPEC_ERRATA.get((operation_id, tail), ())
