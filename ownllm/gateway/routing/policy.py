"""The hybrid route: which backends one tenant's request for one model may use.

Policies are `[[routing.policy]]` tables (`ownllm.config.HybridPolicy`); the most specific
one matching (tenant, model) wins, and with none the request is `local_only`, the
sovereign default. A `remote = true` backend is a candidate only through a policy that
names it:

- `local_only`: local replicas only; none healthy → 503.
- `overflow`: the named remote when every healthy local replica has at least
  `queue_threshold` requests queued or running (or none is healthy).
- `fallback`: the named remote only when no local replica is healthy.
- `route`: the named remote only (a model id served there, e.g. a paid API model).

Remote traffic takes the same gateway path as local (limits, guard, capture, ledger): only
the backend differs.
"""

from __future__ import annotations

from collections.abc import Iterable

from ownllm.config import ConfigError, HybridPolicy

LOCAL_ONLY = HybridPolicy()


class PolicyTable:
    """The hybrid policies, looked up by (tenant, model)."""

    def __init__(self, policies: Iterable[HybridPolicy], remotes: Iterable[str]) -> None:
        remotes = set(remotes)
        self._by_key: dict[tuple[str, str], HybridPolicy] = {}
        for p in policies:
            if p.mode != "local_only" and p.remote not in remotes:
                known = ", ".join(sorted(remotes)) or "none configured"
                raise ConfigError(
                    f"routing.policy (tenant {p.tenant!r}, model {p.model!r}): mode {p.mode} "
                    f"needs `remote` naming a backend with remote = true; got {p.remote!r} "
                    f"(remote backends: {known})"
                )
            self._by_key[(p.tenant, p.model)] = p

    def lookup(self, tenant: str, model: str) -> HybridPolicy:
        for key in ((tenant, model), (tenant, "*"), ("*", model), ("*", "*")):
            policy = self._by_key.get(key)
            if policy is not None:
                return policy
        return LOCAL_ONLY

    def routed_models(self) -> dict[str, str]:
        """Model ids served only remotely (`route`), each with its remote backend."""
        return {p.model: p.remote for p in self._by_key.values() if p.mode == "route"}
