"""The Gateway: its parts built once, wired by their constructors, the hooks in their order,
and each stage calling only the hooks that take part in it."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from ownllm.backends.base import SamplingParams
from ownllm.config import load_config
from ownllm.gateway.capture import CaptureHook
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.guard.hooks import GuardHook
from ownllm.gateway.hooks import InferenceCall, InferenceHook, InferenceOutcome
from ownllm.gateway.metering import MeteringHook
from ownllm.gateway.principal import OPEN_DEV_PRINCIPAL


def build(db=None) -> Gateway:
    return Gateway.build(load_config(env={}), db, backend=lambda: None)


def call() -> InferenceCall:
    return InferenceCall(
        request_id="chatcmpl-1",
        endpoint="chat.completions",
        principal=OPEN_DEV_PRINCIPAL,
        model="tiny",
        base_model="tiny",
        adapters=(),
        sampling=SamplingParams(max_tokens=4),
        messages=[{"role": "user", "content": "hi"}],
    )


def test_metering_comes_first_and_capture_last_with_a_database(two_tenants):
    assert [type(h) for h in build().hooks] == [MeteringHook, GuardHook]  # nothing to store in
    gateway = build(two_tenants.db)
    assert [type(h) for h in gateway.hooks] == [MeteringHook, GuardHook, CaptureHook]
    assert gateway.hooks[0] is gateway.metering
    assert gateway.metering.limiter is gateway.limiter
    assert gateway.metering.ledger is gateway.ledger
    # what settling gives back to the database rides the ledger's batches
    assert gateway.limiter.budgets.defer_write == gateway.ledger.record


class Upper(InferenceHook):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def check_output(self, call, index, text):
        self.seen.append(text)
        return text.upper()


class Cut(InferenceHook):
    async def check_output(self, call, index, text):
        return None if "STOP" in text else text

    async def flush_output(self, call, index):
        return "tail", True


async def test_each_stage_calls_its_hooks_in_order_and_skips_the_rest():
    upper, cut = Upper(), Cut()
    gateway = Gateway(*(None,) * 5, hooks=(upper, cut))
    assert gateway.checks_output
    assert await gateway.check_output(call(), 0, "go") == "GO"
    assert await gateway.check_output(call(), 0, "stop") is None  # cut sees it upper-cased
    assert upper.seen == ["go", "stop"]
    assert await gateway.flush_output(call(), 0) == ("tail", True)
    assert not await gateway.check_input(call())  # no hook takes it: nothing changed
    assert not replace(gateway, hooks=(InferenceHook(),)).checks_output


async def test_a_failing_finish_hook_is_logged_and_the_next_still_runs(caplog):
    finished = []

    class Broken(InferenceHook):
        async def finish(self, call, outcome):
            raise RuntimeError("the ledger is down")

    class Recorder(InferenceHook):
        async def finish(self, call, outcome):
            finished.append(outcome.status_code)

    gateway = Gateway(*(None,) * 5, hooks=(Broken(), Recorder()))
    outcome = InferenceOutcome([], 0, 0, 0, status_code=200)
    with caplog.at_level(logging.ERROR, logger="ownllm.gateway"):
        await gateway.finish(call(), outcome)
    assert finished == [200]
    assert "finish hook" in caplog.text and "the ledger is down" in caplog.text


def test_the_gateway_is_not_changed_after_it_is_built():
    gateway = build()
    with pytest.raises(AttributeError):
        gateway.hooks = ()
