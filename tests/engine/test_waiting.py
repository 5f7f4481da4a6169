"""The engine queue is bounded in requests, sequences and tokens, not only requests."""

from __future__ import annotations

import pytest

from ownllm.engine.messages import GenerateRequest, SamplingParams
from ownllm.engine.waiting import QueueBounds, WaitingWork, reserved_tokens
from ownllm.errors import InvalidRequestError, OverloadedError


def req(request_id: str, prompt_len: int = 10, max_tokens: int = 20, n: int = 1):
    return GenerateRequest(request_id, [1] * prompt_len, SamplingParams(max_tokens=max_tokens, n=n))


def test_a_request_reserves_its_prompt_and_n_completions():
    assert reserved_tokens(req("r", prompt_len=10, max_tokens=20, n=3)) == 70


def test_n_128_with_the_whole_context_is_refused_outright_while_small_requests_get_in():
    work = WaitingWork(QueueBounds(max_requests=100, max_seqs=512, max_tokens=4096))
    with pytest.raises(InvalidRequestError, match="reserves 64266 tokens") as err:
        work.charge(req("huge", prompt_len=10, max_tokens=502, n=128))  # max_tokens omitted
    assert err.value.param == "max_tokens" and err.value.status_code == 400
    assert (work.num_requests, work.num_seqs, work.num_tokens) == (0, 0, 0)
    for i in range(10):
        work.charge(req(f"small-{i}"))
    assert (work.num_requests, work.num_seqs, work.num_tokens) == (10, 10, 300)


def test_work_beyond_the_token_bound_waits_for_admissions():
    work = WaitingWork(QueueBounds(max_requests=100, max_seqs=512, max_tokens=1000))
    work.charge(req("a", max_tokens=490))  # 500 tokens
    work.charge(req("b", max_tokens=490))
    with pytest.raises(OverloadedError, match="1000 tokens") as err:
        work.charge(req("c", max_tokens=490))
    assert err.value.status_code == 503 and err.value.retry_after
    work.release("a")  # admitted by the scheduler
    work.charge(req("c", max_tokens=490))
    assert work.num_tokens == 1000


def test_sequences_count_n_of_each_request():
    work = WaitingWork(QueueBounds(max_requests=100, max_seqs=8, max_tokens=1 << 20))
    with pytest.raises(InvalidRequestError, match="lower n") as err:
        work.charge(req("wide", n=9))
    assert err.value.param == "n"
    work.charge(req("a", n=5))
    with pytest.raises(OverloadedError, match="8 sequences"):
        work.charge(req("b", n=4))
    work.charge(req("c", n=3))
    work.release("a")
    work.release("a")  # twice (admitted, then aborted) releases once
    assert (work.num_requests, work.num_seqs) == (1, 3)


def test_requests_still_count_and_an_id_waits_once():
    work = WaitingWork(QueueBounds(max_requests=2, max_seqs=512, max_tokens=1 << 20))
    work.charge(req("a"))
    with pytest.raises(InvalidRequestError, match="already running"):
        work.charge(req("a"))
    work.charge(req("b"))
    with pytest.raises(OverloadedError, match="2 requests"):
        work.charge(req("c"))
