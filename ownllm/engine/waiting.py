"""The bound on work waiting in the engine: requests, sequences and tokens not yet admitted.

`LLMEngine.add_request` charges a request before it enters the inbox: one
request, `n` sequences, and `prompt + n × max_tokens` tokens (the most KV
cache its choices can hold: they share the prompt). The engine thread
releases the charge when the scheduler admits the request, or when it is
aborted or dropped first. Counting sequences and tokens, not only requests,
keeps one `n=128` request with the whole context as `max_tokens` from
reserving what a hundred ordinary requests would.

A request that does not fit beside what is waiting is refused with
`OverloadedError` (503 with Retry-After). A request over a bound on its own
would never fit, however long it waited: that is an `InvalidRequestError`
(400) naming what to lower, so clients do not retry it forever.

Thread-safe (one lock); no torch. Left out: per-tenant shares of the queue
(the gateway's per-key and per-tenant limits come first).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ownllm.engine.messages import GenerateRequest
from ownllm.errors import InvalidRequestError, OverloadedError

RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class QueueBounds:
    """The most work that may wait at once (sizes derived by the engine; see EngineConfig)."""

    max_requests: int
    max_seqs: int
    max_tokens: int


def reserved_tokens(request: GenerateRequest) -> int:
    """The KV-cache tokens `request` may hold at most: its prompt plus n × max_tokens."""
    sp = request.sampling
    return len(request.prompt_token_ids) + sp.n * sp.max_tokens


class WaitingWork:
    """Charges of the requests accepted but not yet admitted by the scheduler."""

    def __init__(self, bounds: QueueBounds) -> None:
        self.bounds = bounds
        self._charges: dict[str, tuple[int, int]] = {}  # request id -> (sequences, tokens)
        self.num_seqs = 0
        self.num_tokens = 0
        self._lock = threading.Lock()

    @property
    def num_requests(self) -> int:
        return len(self._charges)

    def charge(self, request: GenerateRequest) -> None:
        """Count `request` as waiting, or raise: 400 if it can never fit, 503 if not now."""
        num_seqs, num_tokens = request.sampling.n, reserved_tokens(request)
        self._check_alone(request, num_seqs, num_tokens)
        b = self.bounds
        with self._lock:
            if request.request_id in self._charges:
                raise InvalidRequestError(f"request id {request.request_id!r} is already running")
            if len(self._charges) + 1 > b.max_requests:
                full = f"{b.max_requests} requests"
            elif self.num_seqs + num_seqs > b.max_seqs:
                full = f"{b.max_seqs} sequences"
            elif self.num_tokens + num_tokens > b.max_tokens:
                full = f"{b.max_tokens} tokens"
            else:
                self._charges[request.request_id] = (num_seqs, num_tokens)
                self.num_seqs += num_seqs
                self.num_tokens += num_tokens
                return
        raise OverloadedError(
            f"the engine queue is full (at most {full} waiting); retry shortly",
            retry_after=RETRY_AFTER_S,
        )

    def release(self, request_id: str) -> None:
        """The request left the queue (admitted, aborted or dropped); no-op when not charged."""
        if request_id not in self._charges:  # the common case, on every scheduled sequence
            return
        with self._lock:
            charge = self._charges.pop(request_id, None)
            if charge is not None:
                self.num_seqs -= charge[0]
                self.num_tokens -= charge[1]

    def _check_alone(self, request: GenerateRequest, num_seqs: int, num_tokens: int) -> None:
        b = self.bounds
        if num_seqs > b.max_seqs:
            raise InvalidRequestError(
                f"n={num_seqs} is more sequences than this engine queues at once "
                f"({b.max_seqs}); lower n.",
                param="n",
            )
        if num_tokens > b.max_tokens:
            sp = request.sampling
            raise InvalidRequestError(
                f"This request reserves {num_tokens} tokens ({len(request.prompt_token_ids)} "
                f"in the prompt + n={sp.n} × max_tokens={sp.max_tokens}), more than this "
                f"engine queues at once ({b.max_tokens}); lower n or set a smaller max_tokens.",
                param="max_tokens",
            )
