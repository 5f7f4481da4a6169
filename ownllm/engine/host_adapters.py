"""Host copies of LoRA adapters: where each adapter id is read from, and an LRU of those read.

Any thread may ask for an adapter: `add_request` validates a request's
adapters on the caller's thread, and the engine thread loads slots from these
copies. A miss reads the adapter directory outside the lock, so one slow read
holds up no other lookup. An id is found where it was registered, else where
the resolver says (e.g. a fine-tuning job's output). No torch here: the reader
is passed in.

Left out: the resident slot weights (`ownllm.engine.lora`) and which adapter
set sits in which slot (`ownllm.engine.adapter_slots`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ownllm.errors import ModelNotFoundError

if TYPE_CHECKING:
    from ownllm.engine.lora import LoraAdapter


class HostAdapters:
    """Adapters in host memory, least recently used dropped past `capacity`; thread-safe."""

    def __init__(
        self,
        read: Callable[[str, str], LoraAdapter],
        capacity: int,
        resolver: Callable[[str], str | None] | None = None,
    ) -> None:
        self._read = read  # (adapter_id, directory) -> adapter; raises on a bad adapter
        self.capacity = capacity
        self._resolver = resolver
        self._paths: dict[str, str] = {}
        self._adapters: OrderedDict[str, LoraAdapter] = OrderedDict()  # least recent first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._adapters)

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._adapters

    def get(self, adapter_id: str) -> LoraAdapter:
        """The host copy of `adapter_id`, read from disk (registered or resolved) if needed."""
        with self._lock:
            adapter = self._adapters.get(adapter_id)
            if adapter is not None:
                self._adapters.move_to_end(adapter_id)
                return adapter
            path = self._paths.get(adapter_id)
        if path is None and self._resolver is not None:
            path = self._resolver(adapter_id)
        if path is None or not Path(path).is_dir():
            raise ModelNotFoundError(
                f"The model or adapter {adapter_id!r} does not exist", param="model"
            )
        adapter = self._read(adapter_id, str(path))
        self._store(adapter_id, str(path), adapter)
        return adapter

    def register(self, adapter_id: str, path: str) -> None:
        """Read `adapter_id` from `path` now (raising if it is bad) and remember where it is."""
        adapter = self._read(adapter_id, str(path))
        self._store(adapter_id, str(path), adapter)

    def unregister(self, adapter_id: str) -> None:
        """Forget `adapter_id`; `ModelNotFoundError` when it was neither registered nor read."""
        with self._lock:
            known = self._paths.pop(adapter_id, None) is not None
            known |= self._adapters.pop(adapter_id, None) is not None
        if not known:
            raise ModelNotFoundError(f"adapter {adapter_id!r} is not loaded", param="model")

    def _store(self, adapter_id: str, path: str, adapter: LoraAdapter) -> None:
        with self._lock:
            self._paths[adapter_id] = path
            self._adapters[adapter_id] = adapter
            self._adapters.move_to_end(adapter_id)
            while len(self._adapters) > self.capacity:
                self._adapters.popitem(last=False)
