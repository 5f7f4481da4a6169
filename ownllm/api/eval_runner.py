"""The eval worker inside `ownllm serve`: it runs queued eval and red-team runs through the
same inference path as a live request.

Each item's sample is a chat request built from the run's template and sent to `serve`
(`ownllm.api.inference`) as the route builds it (`chat_run`), for the run's creator (its
key and tenant now, held to their monthly budgets like a batch line; the tenant under its
budget for a run the operator queued), at batch priority,
with the ledger row naming the run (`batch_id`). Model graders ask their model the same
way, and text_similarity embeds through the embeddings run. So limits, guardrails, the
ledger and capture apply to eval traffic exactly as to a client's.

The model a run samples is pinned when the run is created (`EvalRun.adapter_id`, the
version an alias pointed at then), so every item of a run sees one version.

Runs are claimed through `ownllm.evals.store` (heartbeats every quarter of
`evals.lease_s`); each graded item is written at once, so a run whose server died is taken
over by another worker once its lease ends and carries on from the items it has. At most
`evals.max_concurrent_runs` runs, and `evals.max_concurrent_items` items of each, at once.

Each look for work also moves the unattended loops (`ownllm.evals.loop.advance`): a
trained adapter's eval and red-team runs are queued here, and once they end its alias is
promoted or the refusal recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ownllm import ids
from ownllm.api.batch_worker import NeverGone, batch_principal
from ownllm.api.errors import error_body, validation_message
from ownllm.api.inference import serve
from ownllm.api.polling import PollingWorker
from ownllm.api.routes.chat import chat_run
from ownllm.api.routes.embeddings import embedding_run
from ownllm.api.schemas import ChatCompletionRequest, EmbeddingRequest
from ownllm.api.state import AppState
from ownllm.errors import OverloadedError, OwnLLMError, ServerError
from ownllm.evals import loop, store
from ownllm.evals.graders import grade
from ownllm.evals.templates import lookup, render_messages
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.principal import ADMIN_TENANT, Limits, Principal
from ownllm.store.schema import EvalDefinition, EvalRun, Tenant

log = logging.getLogger("ownllm.evals")

OVERLOADED_BACKOFF_S = 0.5
MAX_OVERLOADED_TRIES = 240  # two minutes of a full engine before an item errors
GRADER_MAX_TOKENS = 64


class EvalWorker(PollingWorker):
    """Claims eval runs for this server and runs them; `start` at app start, `stop` at
    shutdown (a run in progress resumes on the next worker). `drain` runs until no
    queued run is left (tests, the CLI)."""

    name = "eval-worker"

    def __init__(self, state: AppState, gateway: Gateway, worker_id: str | None = None) -> None:
        self.state, self.gateway, self.db = state, gateway, state.db
        self.config = state.config.evals
        super().__init__(self.config.poll_interval_s)
        self.worker_id = worker_id or ids.worker_id()

    async def step(self) -> bool:
        """Move the unattended loops a step, then claim runs while there is room; True when
        a loop moved or a run was claimed."""
        has_worked = await asyncio.to_thread(loop.advance, self.db)
        while len(self.running) < self.config.max_concurrent_runs:
            run = await asyncio.to_thread(
                store.claim_run, self.db, self.worker_id, self.config.lease_s
            )
            if run is None:
                break
            has_worked = True
            self.running[run.id] = asyncio.create_task(self._own(run), name=f"eval-{run.id}")
        return has_worked

    async def _own(self, run: EvalRun) -> None:
        try:
            await self.run(run)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("eval run %s failed", run.id)
        finally:
            self.running.pop(run.id, None)
            self._wake.set()

    # -- one run ------------------------------------------------------------------------------

    async def run(self, run: EvalRun) -> None:
        """Sample and grade the run's items not graded yet, then count them into the run."""
        with self.db.session() as s:
            definition = s.get(EvalDefinition, run.eval_id)
        criteria = definition.testing_criteria
        try:
            entries = await asyncio.to_thread(self._entries, run)
            principal = await asyncio.to_thread(run_principal, self.db, run)
            if isinstance(principal, OwnLLMError):
                raise principal
        except OwnLLMError as e:
            error = {"code": e.code, "message": e.message}
            await asyncio.to_thread(
                store.finish_run, self.db, run.id, self.worker_id, criteria, error=error
            )
            return
        done = await asyncio.to_thread(store.graded_item_ids, self.db, run.id)
        todo = [(i, e) for i, e in enumerate(entries) if i not in done]
        log.info("eval run %s: %d of %d items to grade", run.id, len(todo), len(entries))
        limit = asyncio.Semaphore(self.config.max_concurrent_items)
        is_owned = asyncio.Event()
        is_owned.set()

        async def one(index: int, entry: dict) -> None:
            async with limit:
                if not is_owned.is_set():
                    return
                status, results, sample = await self.grade_item(run, principal, criteria, entry)
                await asyncio.to_thread(
                    store.record_item, self.db, run, index, entry, status, results, sample
                )

        items = asyncio.gather(*(one(i, e) for i, e in todo))
        beat = asyncio.create_task(self._heartbeat(run, is_owned, items))
        try:
            await items
        except asyncio.CancelledError:
            if is_owned.is_set():
                raise  # shutdown: the run resumes elsewhere
        finally:
            beat.cancel()
        if not is_owned.is_set():
            log.info("eval run %s is no longer this worker's (canceled or taken over)", run.id)
            return
        report = await self.report(run, definition)
        await asyncio.to_thread(
            store.finish_run, self.db, run.id, self.worker_id, criteria, report=report
        )

    async def report(self, run: EvalRun, definition: EvalDefinition) -> dict | None:
        """The red-team summary of a red-team run (None for an eval)."""
        if definition.kind != "redteam":
            return None
        from ownllm.redteam.suite import summarize

        items = await asyncio.to_thread(store.run_items, self.db, run.id)
        return summarize(items)

    async def _heartbeat(
        self, run: EvalRun, is_owned: asyncio.Event, items: asyncio.Future
    ) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 4)
            owned = await asyncio.to_thread(store.heartbeat, self.db, run.id, self.worker_id)
            if not owned:
                is_owned.clear()
                items.cancel()
                return

    def _entries(self, run: EvalRun) -> list[dict]:
        source = run.data_source["source"]
        if source["type"] == "file_content":
            return source["content"]
        entries = store.read_file_items(self.db, self.state.data_dir, run.tenant_id, source["id"])
        with self.db.session() as s:
            schema = s.get(EvalDefinition, run.eval_id).data_source_config["item_schema"]
        store.check_items(entries, schema, run.data_source["type"], source["id"])
        return entries

    # -- one item -----------------------------------------------------------------------------

    async def grade_item(
        self, run: EvalRun, principal: Principal, criteria: list[dict], entry: dict
    ) -> tuple[str, list[dict], dict]:
        """(status pass | fail | error, each criterion's result, the sample)."""
        item = entry["item"]
        data_source = run.data_source
        if data_source["type"] == "jsonl":
            sample = {"output": [{"role": "assistant", "content": entry["sample"]["output_text"]}],
                      "error": None}  # fmt: skip
            text = entry["sample"]["output_text"]
        else:
            sample, text = await self._sample(run, principal, item)
            if sample["error"] is not None:
                return "error", [], sample

        async def ask(model: str, messages: list[dict], response_format: dict) -> str:
            body = {"model": model, "messages": messages, "temperature": 0,
                    "max_completion_tokens": GRADER_MAX_TOKENS, "response_format": response_format}  # fmt: skip
            status, answer = await self.chat(principal, body, run.id)
            if status != 200:
                raise GraderError(answer.get("error", {}).get("message", f"status {status}"))
            return answer["choices"][0]["message"]["content"] or ""

        async def embed(texts: list[str]) -> list[list[float]]:
            from ownllm.models.embedding import EMBEDDING_MODEL_ID

            status, answer = await self.embeddings(principal, texts, EMBEDDING_MODEL_ID, run.id)
            if status != 200:
                raise GraderError(answer.get("error", {}).get("message", f"status {status}"))
            return [d["embedding"] for d in answer["data"]]

        context = {"output_text": text, "output_json": _json_or_none(text),
                   "finish_reason": sample.get("finish_reason"),
                   "blocked": bool(sample.get("blocked"))}  # fmt: skip
        results = []
        try:
            for criterion in criteria:
                results.append((await grade(criterion, item, context, ask, embed)).to_dict())
        except GraderError as e:
            sample["error"] = {"code": "grader_error", "message": str(e)}
            return "error", results, sample
        status = "pass" if all(r["passed"] for r in results) else "fail"
        return status, results, sample

    async def _sample(self, run: EvalRun, principal: Principal, item: dict) -> tuple[dict, str]:
        data_source = run.data_source
        spec = data_source["input_messages"]
        if spec.get("type") == "item_reference":
            messages = lookup({"item": item}, spec["item_reference"])
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
            ):
                error = {"code": "invalid_item", "message": f"{spec['item_reference']} is not a "
                         "list of messages with string content"}  # fmt: skip
                return {"input": [], "output": [], "model": run.model, "error": error}, ""
            messages = render_messages(messages, {"item": item})
        else:
            messages = render_messages(spec["template"], {"item": item})
        params = dict(data_source.get("sampling_params") or {})
        model = run.adapter_id or self.state.model_id  # the version pinned at creation
        body = {"model": model, "messages": messages, **params}
        status, answer = await self.chat(principal, body, run.id)
        sample: dict[str, Any] = {"input": messages, "output": [], "model": run.model,
                                  "finish_reason": None, "usage": None, "error": None, **params}  # fmt: skip
        if status != 200:
            error = answer.get("error") or {}
            if error.get("code") == "content_policy_violation":  # the guard refused: an answer
                sample.update(blocked=True, finish_reason="content_filter")
                return sample, ""
            sample["error"] = {"code": error.get("code") or str(status),
                               "message": error.get("message", "")}  # fmt: skip
            return sample, ""
        choice = answer["choices"][0]
        text = choice["message"].get("content") or ""
        sample.update(
            output=[{"role": "assistant", "content": text}],
            finish_reason=choice["finish_reason"],
            usage=answer.get("usage"),
        )
        return sample, text

    async def chat(self, principal: Principal, body: dict, run_id: str) -> tuple[int, dict]:
        """One chat call on the inference path: (HTTP status, the body a client would get)."""

        def make():
            return chat_run(
                self.state, self.gateway, principal, ChatCompletionRequest.model_validate(body)
            )

        return await self._serve(make, run_id)

    async def embeddings(
        self, principal: Principal, texts: list[str], model: str, run_id: str
    ) -> tuple[int, dict]:
        def make():
            request = EmbeddingRequest.model_validate({"model": model, "input": texts})
            return embedding_run(self.state, self.gateway, principal, request)

        return await self._serve(make, run_id)

    async def _serve(self, make, run_id: str) -> tuple[int, dict]:
        for _ in range(MAX_OVERLOADED_TRIES):
            try:
                run = make()
                run.call.batch_id = run_id  # batch priority; the ledger row names the run
                response = await serve(run, NeverGone())
                return response.status_code, json.loads(response.body)
            except OverloadedError:
                await asyncio.sleep(OVERLOADED_BACKOFF_S)  # the engine is full: back off
            except ValidationError as e:
                message, param = validation_message(RequestValidationError(e.errors()))
                body = {"error": {"message": message, "type": "invalid_request_error",
                                  "param": param, "code": "invalid_value"}}  # fmt: skip
                return 400, body
            except OwnLLMError as e:
                return e.status_code, error_body(e)
            except Exception as e:
                log.error("eval call of run %s failed", run_id, exc_info=e)
                error = ServerError("The server had an error while processing your request.")
                return error.status_code, error_body(error)
        error = OverloadedError("The engine stayed full; the item was not sampled.")
        return error.status_code, error_body(error)


def run_principal(db, run: EvalRun) -> Principal | OwnLLMError:
    """Who a run's calls run as: its creator's key as a batch line would (monthly budgets
    only), or, for a run the operator queued (the CLI, the promote loop: no key), the
    tenant itself under its monthly budget."""
    if run.key_id is not None or run.tenant_id == ADMIN_TENANT:
        return batch_principal(db, run)
    with db.session() as s:
        tenant = s.get(Tenant, run.tenant_id)
    monthly = tenant.monthly_tokens if tenant is not None else None
    return Principal(tenant_id=run.tenant_id, tenant_limits=Limits(monthly_tokens=monthly))


class GraderError(Exception):
    """A model grader or the embedding model could not answer (the item is an error)."""


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
