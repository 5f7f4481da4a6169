"""Stored completions and feedback → DPO preference pairs (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from ownllm.gateway import capture
from ownllm.gateway.preferences import export_preferences
from ownllm.tuning.preferences import read_pairs
from tests.gateway.test_capture import ACME, GLOBEX, db, guard, store  # noqa: F401 (fixtures)


def _rate(db, guard, cid, rating=None, correction=None, who=ACME):  # noqa: F811
    capture.set_feedback(db, guard, who, cid, rating=rating, correction=correction)


def test_corrections_and_ratings_make_pairs_without_duplicates_or_pii(db, guard, tmp_path):  # noqa: F811
    # a correction beats the model's answer (PII in it is redacted at capture)
    store(db, guard, "c1", "Where is my order?", "No idea.")
    _rate(db, guard, "c1", correction="It ships today; write to ops@example.com for more.")
    # the same correction of the same answer again: one pair
    store(db, guard, "c2", "Where is my order?", "No idea.")
    _rate(db, guard, "c2", correction="It ships today; write to ops@example.com for more.")
    # three rated answers to one prompt: the best against each worse one; a tie, no pair
    store(db, guard, "r1", "How do I reset it?", "Hold the button for 5 seconds.")
    store(db, guard, "r2", "How do I reset it?", "Unplug it.")
    store(db, guard, "r3", "How do I reset it?", "Buy a new one.")
    store(db, guard, "r4", "How do I reset it?", "Ask someone.")
    for cid, rating in (("r1", 5), ("r2", 3), ("r3", 1), ("r4", 5)):
        _rate(db, guard, cid, rating=rating)
    # one rated answer alone, an unrated one, another tenant's: nothing
    store(db, guard, "s1", "Lonely question?", "Lonely answer.")
    _rate(db, guard, "s1", rating=2)
    store(db, guard, "u1", "How do I reset it?", "Unrated.")
    store(db, guard, "g1", "How do I reset it?", "Globex answer.", principal=GLOBEX)
    _rate(db, guard, "g1", rating=1, who=GLOBEX)

    pairs, stats = export_preferences(db, tenant_id="acme")
    got = {(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"])
           for p in pairs}  # fmt: skip
    assert got == {
        ("It ships today; write to [EMAIL] for more.", "No idea."),
        ("Hold the button for 5 seconds.", "Unplug it."),
        ("Hold the button for 5 seconds.", "Buy a new one."),
    }
    assert len(pairs) == 3 and stats.num_duplicates == 1
    assert (stats.num_corrected, stats.num_rated) == (1, 2)
    assert "ops@example.com" not in json.dumps(pairs)
    assert pairs[0]["input"]["messages"][-1] == {"role": "user", "content": "Where is my order?"}
    # the trainer's own validation accepts them (it wants ten at least)
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(capture.to_jsonl(pairs * 4))
    assert len(read_pairs(path)) == 12

    everyone, _ = export_preferences(db)
    assert len(everyone) == 3  # globex's lone rating makes no pair
