from ownllm.gateway.routing.health import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def test_opens_after_k_consecutive_failures_and_probes_once_after_cooldown():
    b = CircuitBreaker(failure_threshold=3, cooldown_s=10)
    b.record_failure(0)
    b.record_failure(1)
    assert b.state == CLOSED and b.allows(1)
    b.record_failure(2)
    assert b.state == OPEN and not b.allows(5)
    assert b.allows(12) and b.state == HALF_OPEN  # the one probe
    assert not b.allows(12)  # a second request waits for the probe's result
    b.record_success()
    assert b.state == CLOSED and b.allows(12)


def test_a_failed_probe_opens_again_for_another_cooldown():
    b = CircuitBreaker(failure_threshold=1, cooldown_s=10)
    b.record_failure(0)
    assert b.allows(10)
    b.record_failure(10)
    assert b.state == OPEN and not b.allows(15) and b.allows(20)
    assert b.num_opened == 2


def test_a_success_resets_the_count():
    b = CircuitBreaker(failure_threshold=2, cooldown_s=10)
    b.record_failure(0)
    b.record_success()
    b.record_failure(1)
    assert b.state == CLOSED
