"""Gateway: auth & tenants, limits, guardrails, capture, usage & cost, routing."""
