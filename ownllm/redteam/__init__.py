"""The red-team suite that ships: probes grouped by OWASP LLM Top 10 (2025) category, a
detector of success for each, and the report (attack success and false-positive rates per
category), run as an eval (kind `redteam`) through the eval machinery."""
