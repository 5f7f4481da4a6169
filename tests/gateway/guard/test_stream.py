"""Streaming checks: nothing a redact/block rule would catch is ever sent, however the text
is cut into deltas, and the stream never stalls."""

from __future__ import annotations

import random

import pytest

from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.policy import load_policy, parse_policy
from ownllm.gateway.guard.stream import SpanChecker, check_spans

PII = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "phone": "+1 415 555 0132",
    "ssn": "123-45-6789",
    "ip": "192.168.10.20",
    "secret": "sk-proj-Abc123def456GHI789jkl012MNO345",
}
TEXT = (
    f"Write to {PII['email']} or ring {PII['phone']}. Card {PII['card']} (not 4111 1111 1111 "
    f"1112), IBAN {PII['iban']}, SSN {PII['ssn']}, host {PII['ip']}, key {PII['secret']}. "
    "Version 1.2.3 shipped on 2026-11-25 to 12 customers."
)


def output_rules(extra=()):
    """The shipped PII/secret rules moved to the output stage, plus `extra` rules."""
    policy = load_policy()
    raw = [
        {**r.raw, "stages": ["output"]}
        for r in policy.rules.rules
        if r.id.startswith(("pii.", "secret."))
    ]
    return parse_policy({"rules": raw + list(extra)}).rules.at("output")


def stream(rules, text, cuts):
    checker = SpanChecker(rules)
    out, start = [], 0
    for end in cuts + [len(text)]:
        out.append(checker.feed(text[start:end]))
        start = end
    out.append(checker.finish())
    return out, checker


def random_cuts(text, rng, max_piece=6):
    cuts, i = [], 0
    while True:
        i += rng.randint(1, max_piece)
        if i >= len(text):
            return cuts
        cuts.append(i)


def test_streamed_output_equals_whole_text_check_for_any_cutting():
    rules = output_rules()
    whole, _ = check_spans(rules, TEXT)
    assert whole == (
        "Write to [EMAIL] or ring [PHONE]. Card [CARD] (not 4111 1111 1111 1112), IBAN [IBAN], "
        "SSN [SSN], host [IP], key [SECRET]. Version 1.2.3 shipped on 2026-11-25 to 12 customers."
    )
    rng = random.Random(0)
    for _ in range(300):
        pieces, _ = stream(rules, TEXT, random_cuts(TEXT, rng))
        assert "".join(pieces) == whole


DISGUISED = (
    "Write to alice.secret\u200b@example.com or bob\uff20example.org, card 4111.1111.1111.1111 "
    "or \uff14\uff11\uff11\uff11 1111 1111 1111; \ufb01ne print\u200b stays."
)


def test_disguised_values_stream_as_the_whole_text_redacts_them():
    rules = output_rules()
    whole, _ = check_spans(rules, DISGUISED)
    assert (
        whole == "Write to [EMAIL] or [EMAIL], card [CARD] or [CARD]; \ufb01ne print\u200b stays."
    )
    rng = random.Random(1)
    for _ in range(200):
        pieces, _ = stream(rules, DISGUISED, random_cuts(DISGUISED, rng))
        assert "".join(pieces) == whole
    pieces, _ = stream(rules, DISGUISED, list(range(1, len(DISGUISED))))
    sent = ""
    for piece in pieces:
        sent += piece
        assert "alice" not in sent and "bob" not in sent and "4111" not in sent


def test_one_character_deltas_never_send_any_part_of_a_value():
    rules = output_rules()
    pieces, checker = stream(rules, TEXT, list(range(1, len(TEXT))))
    sent = ""
    for piece in pieces:
        sent += piece
        for value in PII.values():
            # no prefix of a value longer than what ordinary text shares with it
            for k in range(5, len(value) + 1):
                assert value[:k] not in sent.replace("4111 1111 1111 1112", ""), (value, k)
    assert checker.counts["pii.card"] == 1


def test_holdback_is_small_for_prose_and_the_stream_never_stalls():
    rules = output_rules()
    prose = "The quarterly report shows steady growth across all regions and teams. " * 40
    checker = SpanChecker(rules)
    max_held = 0
    for ch in prose:
        checker.feed(ch)
        max_held = max(max_held, checker.num_held)
    assert max_held <= len("regions ") + 1  # about one word
    digits = "1" * 5000  # could be a card number only up to 19 digits
    checker = SpanChecker(rules)
    sent = "".join(checker.feed(d) for d in digits)
    assert checker.num_held <= checker.max_hold
    assert len(sent) >= len(digits) - checker.max_hold


def test_block_rule_stops_before_the_match_and_sends_nothing_after():
    block = {"id": "codenames", "detector": "deny_terms", "terms": ["project falcon"],
             "stages": ["output"], "action": "block"}  # fmt: skip
    rules = output_rules([block])
    text = f"Hello {PII['email']}, about Project  Falcon: the card is {PII['card']}."
    for cuts in ([], list(range(1, len(text))), [7, 30, 31, 40]):
        pieces, checker = stream(rules, text, cuts)
        assert "".join(pieces) == "Hello [EMAIL], about "
        assert checker.blocked_by.id == "codenames"
        assert checker.feed("more text") == ""


@pytest.mark.parametrize("seed", range(5))
def test_guard_output_checker_cuts_with_content_filter_signal(seed):
    policy = parse_policy({"rules": [
        {"id": "pii.card", "detector": "payment_card", "stages": ["output"], "action": "block"},
        {"id": "pii.email", "detector": "email", "stages": ["output"], "action": "redact"},
    ]})  # fmt: skip
    guard = Guard(policy)
    text = "Mail a.b@example.com then pay 4111-1111-1111-1111 now and more"
    checker = guard.output_checker("t")
    sent, stopped = [], False
    start = 0
    for end in random_cuts(text, random.Random(seed)) + [len(text)]:
        piece = checker.feed(text[start:end])
        start = end
        if piece is None:
            stopped = True
            break
        sent.append(piece)
    tail, is_cut = checker.finish()
    assert "".join(sent) + tail == "Mail [EMAIL] then pay "
    assert is_cut and (stopped or start == len(text))
    assert checker.decision.counts == {"pii.card": 1, "pii.email": 1}


def test_output_size_limit_cuts_at_the_limit():
    policy = parse_policy({"rules": [
        {"id": "size", "detector": "max_chars", "limit": 10, "stages": ["output"], "action": "block"},
    ]})  # fmt: skip
    checker = Guard(policy).output_checker("t")
    assert checker.feed("0123456") == "0123456"
    assert checker.feed("789abc") == "789"
    assert checker.feed("d") is None
    assert checker.finish() == ("", True)
