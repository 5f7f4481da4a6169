"""What a model name means for a tenant, remembered between requests.

Every inference request resolves its `model`: the tenant's alias of that name
(`ownllm.adapters.aliases.find_alias`), else the adapter the name or id means for the caller
(`ownllm.adapters.registry.resolve_model`). Two database queries on the event loop a
request; `ModelNames` answers both from memory, keyed on what the answer depends on (the
tenant and whether the caller is the admin, and the name), so another tenant's answer is
never given.

An entry holds while the database's count of this process's committed writes to the
`adapters` and `model_aliases` tables (`Database.version`) is what it was when the entry
was read: a delete, an unregister, a promotion, a rollback or a new adapter in this process
takes effect on the next request. A write by another process (an `ownllm worker`, another
gateway replica on PostgreSQL) is seen within `ttl_s` (1 s), when the entry is read again.
Errors (an ambiguous name) are not remembered. At most `max_entries` names, the least
recently used forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ownllm.store.db import Database
from ownllm.store.tenancy import Viewer

TABLES = ("adapters", "model_aliases")
TTL_S = 1.0
MAX_ENTRIES = 10_000


class ModelNames:
    """Alias and adapter lookups by name, cached (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        # key -> (db version, read at, answer)
        self._entries: OrderedDict[tuple, tuple[int, float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def alias(self, tenant_id: str, name: str):
        """`find_alias(db, tenant_id, name)`: the tenant's alias record, or None."""
        from ownllm.adapters.aliases import find_alias

        return self._get(("alias", tenant_id, name), lambda: find_alias(self.db, tenant_id, name))

    def adapter(self, viewer: Viewer, name: str):
        """`resolve_model(db, viewer, name)`: the adapter record `name` means, or None."""
        from ownllm.adapters.registry import resolve_model

        key = ("adapter", viewer.tenant_id, viewer.is_admin, name)
        return self._get(key, lambda: resolve_model(self.db, viewer, name))

    def _get(self, key: tuple, read: Callable[[], Any]):
        version, now = self.db.version(*TABLES), self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version and now - entry[1] < self.ttl_s:
                self._entries.move_to_end(key)
                return entry[2]
        answer = read()  # the version was taken before: a write meanwhile outdates it
        with self._lock:
            self._entries[key] = (version, now, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return answer
