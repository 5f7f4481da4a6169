"""Rule tables: each detector's keys are typed, and a bad key says what is allowed."""

from __future__ import annotations

import pytest

from ownllm.gateway.guard.rules import ALLOWED, RULE_KEYS, build_rule

EMAIL = {"id": "no-pii", "detector": "email", "action": "flag"}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"detector": "emial"}, "detector = 'emial': must be one of api_key, email, "),
        ({"colour": "red"}, "unknown key 'colour'; known: action, description, detector, "),
        ({"action": "drop"}, "action = 'drop': must be one of block, redact, flag"),
        ({"stages": 5}, "stages = 5: must be a non-empty list of input, output, capture"),
        ({"stages": []}, "stages = []: must be a non-empty list of input, output, capture"),
        ({"placeholder": 5}, "placeholder = 5: must be a string"),
        ({"message": None}, "message = None: must be a string"),
        ({"id": " "}, "id = ' ': must be a non-empty string"),
        ({"detector": "regex", "pattern": "a("}, "pattern = 'a(': invalid regular expression"),
        ({"detector": "regex", "pattern": "ab", "ignore_case": "yes"},
         "ignore_case = 'yes': must be true or false"),
        ({"detector": "deny_terms", "terms": "falcon"},
         "terms = 'falcon': must be a non-empty list of strings"),
        ({"detector": "max_chars", "limit": "10"}, "limit = '10': must be a positive integer"),
        ({"detector": "max_chars", "limit": True}, "limit = True: must be a positive integer"),
        ({"detector": "max_chars", "limit": -1}, "limit = -1: must be a positive integer"),
        ({"detector": "max_chars"}, "detector 'max_chars' needs `limit`, a positive integer"),
        ({"detector": "classifier", "labels": ["unsafe"], "threshold": 1.5},
         "threshold = 1.5: must be a number between 0 and 1"),
        ({"detector": "classifier", "labels": []},
         "labels = []: must be a non-empty list of the unsafe label names"),
        ({"detector": "classifier", "labels": ["unsafe"], "action": "redact"},
         "action = 'redact': detector 'classifier' finds no span to redact; use block or flag"),
        ({"detector": "max_chars", "limit": 9, "action": "redact"},
         "action = 'redact': detector 'max_chars' can block or flag, not redact"),
    ],
)  # fmt: skip
def test_a_bad_key_is_named_with_its_value_and_what_is_allowed(change, message):
    with pytest.raises(ValueError) as e:
        build_rule({**EMAIL, **change})
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_a_missing_key_is_named_with_what_it_must_be():
    with pytest.raises(ValueError, match="^every rule needs `action`, one of block, redact, flag$"):
        build_rule({"id": "x", "detector": "email"})
    with pytest.raises(ValueError, match="^every rule needs `detector`, one of api_key, "):
        build_rule({"id": "x", "action": "flag"})
    with pytest.raises(ValueError, match="^every rule needs `id`, a non-empty string$"):
        build_rule({"detector": "email", "action": "flag"})


def test_every_key_says_what_is_allowed():
    assert set(ALLOWED) == RULE_KEYS


def test_keys_keep_their_meaning():
    rule = build_rule({"id": "emp", "detector": "regex", "pattern": "emp-\\d{6}",
                       "ignore_case": True, "stages": "output", "action": "redact"})  # fmt: skip
    assert rule.stages == ("output",)  # one stage as a plain string
    assert rule.span.find("Badge EMP-123456") == [(6, 16)]
    assert rule.placeholder == "[REDACTED]"
    assert build_rule({**EMAIL, "placeholder": ""}).placeholder == "[EMAIL]"
    assert build_rule(EMAIL).stages == ("input",)
    classifier = build_rule({"id": "c", "detector": "classifier", "labels": ["unsafe"],
                             "threshold": 1, "action": "flag"})  # fmt: skip
    assert (classifier.labels, classifier.threshold) == (("unsafe",), 1.0)
    # a key another detector uses is ignored, as a tenant override may change the detector
    assert build_rule({**EMAIL, "limit": 5}).limit == 0
