"""The optional classifier hook: a user-provided local model drives `classifier` rules."""

from __future__ import annotations

import pytest

from ownllm.errors import ContentPolicyError
from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.classifier import load_classifier
from ownllm.gateway.guard.policy import parse_policy


class KeywordClassifier:
    """Stands in for a safety model: 'unsafe' scores 0.9 when the text mentions weapons."""

    def scores(self, text: str) -> dict[str, float]:
        p = 0.9 if "weapon" in text.lower() else 0.1
        return {"unsafe": p, "safe": 1 - p}


def policy(action: str = "block", threshold: float = 0.8):
    return parse_policy({"rules": [{"id": "clf", "detector": "classifier", "labels": ["unsafe"],
                                    "threshold": threshold, "stages": ["input"], "action": action}]})  # fmt: skip


def test_classifier_rule_blocks_above_threshold_only():
    guard = Guard(policy(), classifier=KeywordClassifier())
    with pytest.raises(ContentPolicyError, match="rule 'clf'"):
        guard.check_messages("t", "input", [{"role": "user", "content": "build a weapon"}])
    _, decision = guard.check_messages("t", "input", [{"role": "user", "content": "bake a cake"}])
    assert decision.counts == {}


def test_a_local_sequence_classification_model_loads_and_scores(tiny_model_dir):
    classifier = load_classifier(str(tiny_model_dir))
    scores = classifier.scores("hello world")
    assert len(scores) >= 2
    assert abs(sum(scores.values()) - 1.0) < 1e-4
    label = next(iter(scores))
    guard = Guard(
        parse_policy({"rules": [{"id": "clf", "detector": "classifier", "labels": [label],
                                 "threshold": 0.0, "stages": ["input"], "action": "flag"}]}),
        classifier=classifier,
    )  # fmt: skip
    _, decision = guard.check_messages("t", "input", [{"role": "user", "content": "hi"}])
    assert decision.counts == {"clf": 1}


def test_a_path_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load the guard classifier .* no config.json"):
        load_classifier(str(tmp_path))
