"""Guardrails: the company's own policy applied to prompts, completions and stored data.

    policy.py      rules from a TOML/YAML file, global with per-tenant overrides
    rules.py       one rule table validated per detector, and the Rule it builds
    detectors.py   PII and secret patterns with checksums; custom regexes; deny-lists
    heuristics.py  prompt-injection, jailbreak, system-prompt-extraction, exfiltration
    stream.py      incremental span checking that holds back the least text
    classifier.py  optional user-provided local safety classifier
    checks.py      the Guard: one stage's decision (block / redact / flag) and its events
    hooks.py       the guard's place in the inference pipeline

`default_policy.toml` is the shipped policy.
"""
