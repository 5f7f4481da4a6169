"""Policy files: TOML and YAML, per-tenant overrides, and errors that say what to fix."""

from __future__ import annotations

import pytest

from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy, parse_policy

TOML = """
version = 1

[[rules]]
id = "pii.email"
detector = "email"
stages = ["input", "capture"]
action = "redact"

[[rules]]
id = "acme.codenames"
detector = "deny_terms"
terms = ["project falcon"]
stages = ["input", "output"]
action = "block"
message = "Code names stay internal."

[[rules]]
id = "acme.employee_id"
detector = "regex"
pattern = 'EMP-\\d{6}'
placeholder = "[EMPLOYEE_ID]"
stages = ["output"]
action = "redact"

[tenants.support]
disable = ["acme.codenames"]
[[tenants.support.rules]]
id = "pii.email"
action = "flag"

[[tenants.support.rules]]
id = "support.card"
detector = "payment_card"
stages = ["input"]
action = "block"
"""

YAML = """
version: 1
rules:
  - id: pii.email
    detector: email
    stages: [input, capture]
    action: redact
  - id: acme.codenames
    detector: deny_terms
    terms: [project falcon]
    stages: [input, output]
    action: block
    message: Code names stay internal.
  - id: acme.employee_id
    detector: regex
    pattern: 'EMP-\\d{6}'
    placeholder: '[EMPLOYEE_ID]'
    stages: [output]
    action: redact
tenants:
  support:
    disable: [acme.codenames]
    rules:
      - {id: pii.email, action: flag}
      - {id: support.card, detector: payment_card, stages: [input], action: block}
"""


@pytest.mark.parametrize("name,text", [("policy.toml", TOML), ("policy.yaml", YAML)])
def test_toml_and_yaml_policies_load_the_same_rules(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    policy = load_policy(path)
    assert [r.id for r in policy.rules.rules] == ["pii.email", "acme.codenames", "acme.employee_id"]
    guard = Guard(policy)
    out, _ = guard.check_text("anyone", "output", "Badge EMP-123456 issued.")
    assert out == "Badge [EMPLOYEE_ID] issued."
    support = policy.for_tenant("support")
    assert [r.id for r in support.rules] == ["pii.email", "acme.employee_id", "support.card"]
    assert support.get("pii.email").action == "flag"
    assert support.get("pii.email").stages == ("input", "capture")  # inherited fields


def test_tenant_override_relaxes_and_tightens(tmp_path):
    (tmp_path / "p.toml").write_text(TOML)
    guard = Guard(load_policy(tmp_path / "p.toml"))
    prompt = [{"role": "user", "content": "Mail bo@example.com about project falcon"}]
    with pytest.raises(Exception) as blocked:
        guard.check_messages("acme", "input", prompt)
    assert "Code names stay internal. (rule 'acme.codenames')" in str(blocked.value)
    messages, decision = guard.check_messages("support", "input", prompt)
    assert messages[0]["content"] == prompt[0]["content"]  # email only flagged for support
    assert decision.counts == {"pii.email": 1}
    card = [{"role": "user", "content": "card 4111 1111 1111 1111"}]
    assert guard.check_messages("acme", "input", card)[1].counts == {}
    with pytest.raises(Exception, match="support.card"):
        guard.check_messages("support", "input", card)


def test_default_policy_ships_and_only_redacts_at_capture():
    policy = load_policy()
    assert load_policy(DEFAULT_POLICY_PATH).rules == policy.rules
    for rule in policy.rules.rules:
        if rule.id.startswith(("pii.", "secret.")):
            assert (rule.stages, rule.action) == (("capture",), "redact"), rule.id
        if rule.id.startswith("attack."):
            assert (rule.stages, rule.action) == (("input",), "flag"), rule.id
    kinds = {r.detector for r in policy.rules.rules}
    assert {"email", "phone", "payment_card", "iban", "us_ssn", "ipv4", "ipv6", "api_key"} <= kinds


@pytest.mark.parametrize(
    "rule,message",
    [
        ({"id": "x", "detector": "email", "action": "delete"}, "action = 'delete': must be one of"),
        ({"id": "x", "detector": "emial", "action": "flag"}, "detector = 'emial': must be one of"),
        ({"id": "x", "detector": "email", "action": "flag", "stages": ["prompt"]}, "stages"),
        ({"id": "x", "detector": "regex", "action": "redact", "pattern": "a+"}, "unbounded"),
        ({"id": "x", "detector": "prompt_injection", "action": "redact"}, "use block or flag"),
        (
            {"id": "x", "detector": "jailbreak", "action": "block", "stages": ["output"]},
            "only flag",
        ),
        ({"id": "x", "detector": "deny_terms", "action": "block"}, "needs `terms`"),
        ({"id": "x", "detector": "max_chars", "action": "block", "limit": 0}, "positive integer"),
        (
            {"id": "x", "detector": "email", "action": "flag", "colour": "red"},
            "unknown key 'colour'",
        ),
    ],
)
def test_bad_rules_are_refused_naming_the_rule(rule, message):
    with pytest.raises(PolicyError, match="rules\\[0\\] \\(id 'x'\\)") as e:
        parse_policy({"rules": [rule]}, "p.toml")
    assert message in str(e.value)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[rules]\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(tmp_path / "bad.toml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(tmp_path / "bad.yaml")
    with pytest.raises(PolicyError, match="disable names unknown rule 'nope'"):
        parse_policy({"rules": [], "tenants": {"t": {"disable": ["nope"]}}})
    with pytest.raises(PolicyError, match="appears twice"):
        rule = {"id": "a", "detector": "email", "action": "flag"}
        parse_policy({"rules": [rule, rule]})


def test_classifier_rules_need_a_classifier():
    policy = parse_policy(
        {"rules": [{"id": "c", "detector": "classifier", "labels": ["unsafe"], "action": "block"}]}
    )
    with pytest.raises(PolicyError, match="guard.classifier_path"):
        Guard(policy)


FIRST = {"id": "ok", "detector": "email", "action": "flag"}


@pytest.mark.parametrize(
    "change,field",
    [
        ({"detector": "emial"}, "detector = 'emial': must be one of"),  # unknown detector
        ({"colour": "red"}, "unknown key 'colour'; known:"),  # unknown field
        ({"ignore_case": 1, "detector": "regex", "pattern": "ab"}, "ignore_case = 1: must be"),
        ({"detector": "max_chars", "limit": 0}, "limit = 0: must be a positive integer"),
        ({"detector": "regex", "pattern": "(ab"}, "pattern = '(ab': invalid regular expression"),
    ],
)
def test_a_bad_rule_is_named_by_file_position_id_and_field(change, field):
    rule = {"id": "no-pii", "detector": "email", "action": "block", **change}
    with pytest.raises(PolicyError) as e:
        parse_policy({"rules": [FIRST, rule]}, "p.toml")
    assert str(e.value).startswith(f"policy 'p.toml': rules[1] (id 'no-pii'): {field}")


@pytest.mark.parametrize(
    "tenant,message",
    [
        ({"disable": 5}, "tenant 't': disable = 5: must be a list of rule ids"),
        ({"disable": "ok"}, "tenant 't': disable = 'ok': must be a list of rule ids"),
        ({"rules": [{"id": ["ok"]}]}, "tenant 't': rules[0]: every rule needs `id`"),
        ({"rules": [{"id": "new", "detector": "email", "action": "flag"}, {"id": "ok", "action": "drop"}]},
         "tenant 't': rules[1] (id 'ok'): action = 'drop': must be one of block, redact, flag"),
    ],
)  # fmt: skip
def test_a_bad_tenant_override_is_named_by_its_own_position(tenant, message):
    with pytest.raises(PolicyError) as e:
        parse_policy({"rules": [FIRST], "tenants": {"t": tenant}}, "p.toml")
    assert str(e.value).startswith(f"policy 'p.toml', {message}")


def test_unreadable_and_malformed_files_are_one_line_errors(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'[[rules]]\nid = "caf\xe9"\n')
    with pytest.raises(PolicyError, match="latin1.toml' cannot be read: 'utf-8' codec"):
        load_policy(tmp_path / "latin1.toml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML") as e:
        load_policy(tmp_path / "bad.yaml")
    assert "\n" not in str(e.value)
