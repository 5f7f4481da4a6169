"""Two runs of one eval side by side: per criterion the pass rates, the delta and its
95% confidence interval, and the items whose verdict changed.

The interval of a pass rate is Wilson's score interval; the interval of the difference of
two pass rates is Newcombe's hybrid score interval (Newcombe 1998, method 10), built from
the two Wilson intervals. It treats the runs as independent samples; for two runs over the
same items (paired) it is conservative, i.e. wider than a paired interval would be.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


def wilson(passed: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion passed/total ((0, 1) when total is 0)."""
    if total == 0:
        return 0.0, 1.0
    p = passed / total
    denominator = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def newcombe(
    passed_a: int, total_a: int, passed_b: int, total_b: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p_b - p_a (method 10)."""
    p_a = passed_a / total_a if total_a else 0.0
    p_b = passed_b / total_b if total_b else 0.0
    lo_a, hi_a = wilson(passed_a, total_a, z)
    lo_b, hi_b = wilson(passed_b, total_b, z)
    delta = p_b - p_a
    lower = delta - math.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2)
    upper = delta + math.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2)
    return max(-1.0, lower), min(1.0, upper)


def _criterion_counts(items: dict[int, dict], name: str | None) -> tuple[int, int]:
    """(passed, graded) of one criterion over a run's items; None: items passing all."""
    passed = graded = 0
    for entry in items.values():
        if name is None:
            graded += 1
            passed += entry["status"] == "pass"
            continue
        for result in entry["results"]:
            if result["name"] == name:
                graded += 1
                passed += bool(result["passed"])
    return passed, graded


def compare_runs(
    criteria: list[dict[str, Any]], items_a: dict[int, dict], items_b: dict[int, dict]
) -> dict[str, Any]:
    """Run A (the baseline, e.g. the base model) against run B (the candidate)."""
    rows = []
    for name in [c["name"] for c in criteria] + [None]:
        passed_a, total_a = _criterion_counts(items_a, name)
        passed_b, total_b = _criterion_counts(items_b, name)
        rate_a = passed_a / total_a if total_a else None
        rate_b = passed_b / total_b if total_b else None
        lower, upper = newcombe(passed_a, total_a, passed_b, total_b)
        rows.append(
            {
                "criterion": name or "all criteria",
                "a": {
                    "passed": passed_a,
                    "total": total_a,
                    "pass_rate": rate_a,
                    "interval": wilson(passed_a, total_a),
                },
                "b": {
                    "passed": passed_b,
                    "total": total_b,
                    "pass_rate": rate_b,
                    "interval": wilson(passed_b, total_b),
                },
                "delta": None if rate_a is None or rate_b is None else rate_b - rate_a,
                "delta_interval": (lower, upper),
            }  # fmt: skip
        )
    changed = []
    for index in sorted(set(items_a) & set(items_b)):
        a, b = items_a[index], items_b[index]
        if a["status"] != b["status"]:
            changed.append(
                {
                    "datasource_item_id": index,
                    "item": b["item"],
                    "a": {"status": a["status"], "output": _output(a)},
                    "b": {"status": b["status"], "output": _output(b)},
                }
            )
    return {
        "interval": "95% Wilson score per run; Newcombe hybrid score (method 10) for the delta",
        "criteria": rows,
        "changed_items": changed,
    }


def _output(entry: dict) -> str:
    output = (entry.get("sample") or {}).get("output") or []
    return output[0]["content"] if output else ""


def format_table(comparison: dict[str, Any], label_a: str, label_b: str) -> str:
    """The comparison as the text table `ownllm eval compare` prints."""

    def rate(side: dict) -> str:
        if side["pass_rate"] is None:
            return "-"
        return f"{side['pass_rate']:.3f} ({side['passed']}/{side['total']})"

    header = ("CRITERION", label_a, label_b, "DELTA", "95% CI (Newcombe)")
    rows = [header]
    for row in comparison["criteria"]:
        delta = "-" if row["delta"] is None else f"{row['delta']:+.3f}"
        lo, hi = row["delta_interval"]
        rows.append(
            (row["criterion"], rate(row["a"]), rate(row["b"]), delta, f"[{lo:+.3f}, {hi:+.3f}]")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    changed = comparison["changed_items"]
    lines.append("")
    lines.append(f"{len(changed)} item(s) changed verdict")
    for entry in changed[:20]:
        a, b = entry["a"], entry["b"]
        lines.append(f"  #{entry['datasource_item_id']}: {a['status']} -> {b['status']}  "
                     f"{a['output'][:40]!r} -> {b['output'][:40]!r}")  # fmt: skip
    return "\n".join(lines)
