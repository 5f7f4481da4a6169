"""PII and secret detectors: the corpus of valid values and checksum-failing look-alikes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.detectors import (
    BUILTIN_PATTERNS,
    builtin_detector,
    deny_terms_detector,
    iban_ok,
    luhn_ok,
    make_span_detector,
    pattern_max_len,
    ssn_ok,
)
from ownllm.gateway.guard.policy import load_policy

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "pii_corpus.jsonl").open()]
VALID = [c for c in CORPUS if c["valid"]]
LOOKALIKES = [c for c in CORPUS if not c["valid"]]


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(load_policy())


def test_corpus_covers_every_kind_with_valid_and_invalid_values():
    kinds = {c["kind"] for c in CORPUS}
    assert kinds == {"card", "iban", "email", "phone", "ssn", "ip", "secret"}
    for kind in kinds:
        assert any(c["kind"] == kind and c["valid"] for c in CORPUS)
        assert any(c["kind"] == kind and not c["valid"] for c in CORPUS)
    phones = [c["value"] for c in VALID if c["kind"] == "phone"]
    assert len(phones) >= 8  # several formats: +CC, (area), dashes, dots, national


@pytest.mark.parametrize("case", VALID, ids=lambda c: f"{c['kind']}:{c['value'][:24]}")
def test_shipped_policy_redacts_valid_values_in_what_capture_stores(guard, case):
    text = f"Please use {case['value']} for this — thanks."
    out, decision = guard.check_text("default", "capture", text)
    assert case["value"] not in out
    assert out == f"Please use {case['placeholder']} for this — thanks."
    assert sum(decision.counts.values()) == 1


@pytest.mark.parametrize("case", LOOKALIKES, ids=lambda c: f"{c['kind']}:{c['value'][:24]}")
def test_lookalikes_that_fail_the_checksum_are_left_alone(guard, case):
    text = f"Reference {case['value']} in the ledger."
    out, decision = guard.check_text("default", "capture", text)
    assert out == text
    assert not decision.counts


def test_validators():
    assert luhn_ok("4111 1111 1111 1111") and not luhn_ok("4111 1111 1111 1112")
    assert not luhn_ok("0000000000000000")  # passes Luhn, never a real card
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    assert not iban_ok("DE89 3704 0044 0532 0130")  # wrong length for DE
    assert ssn_ok("123-45-6789")
    for bad in ("000-12-3456", "666-12-3456", "900-12-3456", "123-00-1234", "123-45-0000"):
        assert not ssn_ok(bad)


def test_several_values_in_one_text_each_get_their_placeholder(guard):
    text = (
        "Mail ana@example.org, call +44 20 7946 0958, pay DE89370400440532013000 "
        "with 5555555555554444, server 10.1.2.3, token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8."
    )
    out, decision = guard.check_text("default", "capture", text)
    assert out == (
        "Mail [EMAIL], call [PHONE], pay [IBAN] with [CARD], server [IP], token [SECRET]."
    )
    assert decision.counts == {
        "pii.email": 1, "pii.phone": 1, "pii.iban": 1, "pii.card": 1, "pii.ip": 1,
        "secret.api_key": 1,
    }  # fmt: skip


def test_every_builtin_pattern_is_bounded():
    for name in BUILTIN_PATTERNS:
        detector = builtin_detector(name)
        assert 0 < detector.max_len <= 9000, name


def test_unbounded_custom_pattern_is_refused_with_the_fix():
    assert pattern_max_len(r"EMP-\d+") is None
    assert pattern_max_len(r"EMP-\d{6}") == 10
    with pytest.raises(ValueError, match=r"bound every repetition"):
        make_span_detector("x", r"EMP-\d+", "[X]")
    with pytest.raises(ValueError, match="invalid regular expression"):
        make_span_detector("x", r"EMP-(\d{6}", "[X]")


def test_deny_terms_ignore_case_extra_spaces_and_zero_width_characters():
    detector = deny_terms_detector("codenames", ["Project Falcon"], "[CODENAME]")
    for text in ("project falcon", "PROJECT   FALCON", "Pro\u200bject\nFalcon"):
        assert detector.find(f"about {text} today") != [], text
    assert detector.find("projectfalcon and falconry project") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail alice.secret\u200b@example.com now", "mail [EMAIL] now"),
        ("mail alice\uff20example\uff0ecom now", "mail [EMAIL] now"),
        ("mail a\u200b\u2060l\u00adi\ufeffce@example.com\u200b now", "mail [EMAIL]\u200b now"),
        ("card \uff14\uff11\uff11\uff11 1111 1111 1111 now", "card [CARD] now"),
        ("card 4111\u200b1111\u200b1111\u200b1111 now", "card [CARD] now"),
        ("card 4111.1111.1111.1111 now", "card [CARD] now"),
        ("call +1\u200b 415 555 0132 now", "call [PHONE] now"),
    ],
)
def test_invisible_and_full_width_characters_do_not_hide_pii(guard, text, expected):
    # the whole original span goes, zero-width characters inside it included
    out, decision = guard.check_text("default", "capture", text)
    assert out == expected
    assert sum(decision.counts.values()) == 1
