"""Open conversations: answers whose next turn is likely to come back to their replica.

A chat's next turn is the whole conversation so far and a new message, so its prompt holds
every full block of the one before. When an answer ends, its prompt's last block hash is
remembered with the replica and the time; the request whose prompt holds that block
continues the conversation, wherever it is routed, and closes it. Until then it counts on
its replica, decaying as exp(-age / think_s), think_s the expected time from an answer to
the next turn: the last turn of a conversation never comes back, and the longer one stays
open the likelier it was the last. The router reads the count (`ReplicaView.
open_conversations`) when a request must load its adapter: that request's whole prompt is
prefilled where it goes, and a conversation whose next turn arrives meanwhile waits or is
moved too (`ownllm.gateway.routing.scoring`).

Approximate like the prefix index: what is counted is this gateway's answers only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from ownllm.gateway.routing.scoring import ReplicaView

FORGET_AFTER = 10  # think times: an older answer weighs e^-10, and is forgotten


class OpenConversations:
    """The open conversations of a set of replicas (their `ReplicaView`s)."""

    def __init__(self, views: Sequence[ReplicaView], think_s: float) -> None:
        self.think_s = think_s
        self._views = list(views)
        self._at = 0.0  # when the views' counts were last decayed
        # a prompt's last block -> (its replica's view, when it was answered), oldest first
        self._open: OrderedDict[int, tuple[ReplicaView, float]] = OrderedDict()
        self._num_open: dict[str, int] = {}  # per replica: a count that reaches 0 exactly

    def __len__(self) -> int:
        return len(self._open)

    def answered(self, view: ReplicaView, last_block: int, now: float) -> None:
        """A prompt ending in `last_block` was answered on `view`'s replica at `now`."""
        self.age(now)
        self._close(last_block, now)
        self._open[last_block] = (view, now)
        self._num_open[view.name] = self._num_open.get(view.name, 0) + 1
        view.open_conversations += 1.0

    def continued(self, hashes: Sequence[int], now: float) -> None:
        """A prompt of these block hashes arrived: close every conversation it continues."""
        self.age(now)
        for h in hashes:
            if h in self._open:
                self._close(h, now)

    def age(self, now: float) -> None:
        """Decay every count to `now`; forget answers FORGET_AFTER think times old."""
        if now > self._at:
            factor = math.exp(-(now - self._at) / self.think_s)
            for view in self._views:
                view.open_conversations *= factor
            self._at = now
        oldest = now - FORGET_AFTER * self.think_s
        while self._open:
            block, (_, answered_at) = next(iter(self._open.items()))
            if answered_at >= oldest:
                break
            self._close(block, now)

    def _close(self, block: int, now: float) -> None:
        view, answered_at = self._open.pop(block, (None, now))
        if view is None:
            return
        self._num_open[view.name] -= 1
        if self._num_open[view.name]:
            weight = math.exp(-(now - answered_at) / self.think_s)
            view.open_conversations = max(0.0, view.open_conversations - weight)
        else:
            view.open_conversations = 0.0  # no rounding left over
