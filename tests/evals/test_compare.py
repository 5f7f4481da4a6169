"""The intervals against published values, and a comparison's rows and changed items."""

from __future__ import annotations

import pytest

from ownllm.evals.compare import compare_runs, format_table, newcombe, wilson


def test_wilson_and_newcombe_match_the_published_examples():
    # Newcombe (1998), Statistics in Medicine 17: 857-872, tables I and II
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert newcombe(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_compare_counts_per_criterion_and_lists_changed_items():
    def entry(status, exact, output):
        return {"status": status, "item": {"q": output}, "sample": {"output": [{"content": output}]},
                "results": [{"name": "exact", "passed": exact}]}  # fmt: skip

    base = {
        0: entry("pass", True, "Paris"),
        1: entry("fail", False, "?"),
        2: entry("fail", False, "?"),
    }
    tuned = {
        0: entry("pass", True, "Paris"),
        1: entry("pass", True, "Rome"),
        2: entry("fail", False, "?"),
    }
    result = compare_runs([{"name": "exact"}], base, tuned)
    exact = result["criteria"][0]
    assert exact["a"]["pass_rate"] == pytest.approx(1 / 3) and exact["b"]["passed"] == 2
    assert exact["delta"] == pytest.approx(1 / 3)
    lo, hi = exact["delta_interval"]
    assert lo < exact["delta"] < hi and lo >= -1 and hi <= 1
    assert result["criteria"][1]["criterion"] == "all criteria"
    assert [c["datasource_item_id"] for c in result["changed_items"]] == [1]
    table = format_table(result, "base", "tuned")
    assert "exact" in table and "+0.333" in table and "#1: fail -> pass" in table
