"""A replica's health: its circuit breaker and the state /ready shows.

The breaker counts consecutive failures (a request that failed on the replica, a health
check that failed or timed out). At `failure_threshold` it opens: the router sends the
replica nothing for `cooldown_s`. Then it is half-open: one request (or health check) may
probe it; success closes the circuit, failure opens it for another cooldown. Any success
resets the count. Time is passed in (`now`), so tests drive it with events, not sleeps.

A replica's state is `healthy` (circuit closed, last check passed), `circuit_open` (open or
half-open: failing requests), or `down` (its last health check failed). Only a healthy
replica, or a half-open one's single probe, gets traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int = 3
    cooldown_s: float = 15.0
    state: str = CLOSED
    num_failures: int = 0  # consecutive
    opened_at: float = 0.0
    is_probing: bool = False  # half-open: the one probe is out
    num_opened: int = 0  # times it opened, for /metrics

    def allows(self, now: float) -> bool:
        """Whether a request may go to the replica now (takes the half-open probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state, self.is_probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self.is_probing:
            self.is_probing = True
            return True
        return False

    def would_allow(self, now: float) -> bool:
        """`allows` without taking the probe (for listing candidates)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.cooldown_s
        return not self.is_probing

    def record_success(self) -> None:
        self.state, self.num_failures, self.is_probing = CLOSED, 0, False

    def record_failure(self, now: float) -> None:
        self.num_failures += 1
        if self.state == HALF_OPEN or self.num_failures >= self.failure_threshold:
            if self.state != OPEN:
                self.num_opened += 1
            self.state, self.opened_at, self.is_probing = OPEN, now, False
