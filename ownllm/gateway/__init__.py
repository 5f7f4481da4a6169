"""Gateway: one typed `Gateway` (`gateway.py`) built once per app from its parts —

auth & tenants (`auth`, `keys`, `principal`) · limits (`limits`, `budget`) ·
guardrails (`guard/`) · capture (`capture`, `purge`) · usage & cost (`usage`, `metering`,
`cost`) — and the plug points of the inference path they hook into (`hooks`).
"""
