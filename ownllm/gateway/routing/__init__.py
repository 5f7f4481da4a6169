"""Routing over backend replicas: affinity scoring, health, failover, the hybrid route.

- `prefix`: tenant-scoped prompt-block hashes, per-replica prefix and adapter indexes;
- `scoring`: the score (formula and defaults in its docstring), round robin, least loaded;
- `health`: the circuit breaker and the replica states /ready shows;
- `policy`: local_only / overflow / fallback / route per tenant and model;
- `router`: `Router`, a `Backend` over the replicas, with retry before the first token.
"""

from ownllm.gateway.routing.router import Replica, Router

__all__ = ["Replica", "Router"]
