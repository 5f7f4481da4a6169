"""Open conversations: answers whose next turn is likely to come back to their replica.

A chat's next turn is the whole conversation so far and a new message, so its prompt holds
every full block of the one before. When an answer ends, its prompt's last block hash is
remembered with the replica and the time; the request whose prompt holds that block
continues the conversation, wherever it is routed, and closes it. Until then it counts on
its replica with weight

    share × exp(-age / think_s)

share the part of recent conversations that did continue, think_s the expected time from
an answer to the next turn: the last turn of a conversation never comes back, the longer
one stays open the likelier it was the last, and traffic of single requests (share 0)
counts nothing. The router reads the count (`ReplicaView.open_conversations`) when a
request must load its adapter: that request's whole prompt is prefilled where it goes, and
a conversation whose next turn arrives meanwhile waits or is moved too
(`ownllm.gateway.routing.scoring`).

Both are learned from what the router sees, over the last WINDOW conversations:
- think_s: the mean time from an answer to the prompt that continued it (fixed instead by
  `[routing] conversation_think_s` > 0); INITIAL_THINK_S until one is seen;
- share: continued / (continued + forgotten + 1), an answer forgotten once FORGET_AFTER
  think times old without a next turn, or when MAX_OPEN newer ones are remembered (so 0
  until a conversation is seen to continue).

Approximate like the prefix index: what is counted is this gateway's answers only.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence

from ownllm.gateway.routing.scoring import ReplicaView

FORGET_AFTER = 10  # think times: an older answer weighs e^-10, and is forgotten
INITIAL_THINK_S = 10.0  # the think time assumed until a next turn is seen
MIN_THINK_S, MAX_THINK_S = 0.1, 3600.0  # a learned think time is kept within these
MAX_OPEN = 100_000  # answers remembered at most (the oldest is forgotten first)
WINDOW = 256  # conversations the think time and the share are learned over


class OpenConversations:
    """The open conversations of a set of replicas (their `ReplicaView`s)."""

    def __init__(self, views: Sequence[ReplicaView], think_s: float = 0.0) -> None:
        self.fixed_think_s = think_s  # 0: learned
        self._views = list(views)
        self._at = 0.0  # when the views' counts were last decayed
        self._clock = 0.0  # decay so far: the sum of (elapsed / think_s) over time
        # a prompt's last block -> (its replica's view, when it was answered, the decay
        # clock then, its weight then), oldest first
        self._open: OrderedDict[int, tuple[ReplicaView, float, float, float]] = OrderedDict()
        self._num_open: dict[str, int] = {}  # per replica: a count that reaches 0 exactly
        self._gaps: deque[float] = deque()  # answer -> next turn, seconds: the last WINDOW
        self._gap_sum = 0.0
        self._outcomes: deque[bool] = deque()  # continued, or forgotten: the last WINDOW
        self._num_continued = 0

    def __len__(self) -> int:
        return len(self._open)

    @property
    def think_s(self) -> float:
        """The think time in use: the fixed one, else the mean of the gaps seen."""
        if self.fixed_think_s > 0:
            return self.fixed_think_s
        if not self._gaps:
            return INITIAL_THINK_S
        return min(MAX_THINK_S, max(MIN_THINK_S, self._gap_sum / len(self._gaps)))

    @property
    def share(self) -> float:
        """The part of recent answers that a next turn followed."""
        return self._num_continued / (len(self._outcomes) + 1)

    def answered(self, view: ReplicaView, last_block: int, now: float) -> None:
        """A prompt ending in `last_block` was answered on `view`'s replica at `now`."""
        self.age(now)
        self._close(last_block)
        weight = self.share
        self._open[last_block] = (view, now, self._clock, weight)
        self._num_open[view.name] = self._num_open.get(view.name, 0) + 1
        view.open_conversations += weight
        if len(self._open) > MAX_OPEN:
            self._close(next(iter(self._open)))
            self._outcome(False)

    def continued(self, hashes: Sequence[int], now: float) -> None:
        """A prompt of these block hashes arrived: close every conversation it continues."""
        self.age(now)
        for h in hashes:
            if h in self._open:
                answered_at = self._open[h][1]
                self._close(h)
                self._gaps.append(now - answered_at)
                self._gap_sum += now - answered_at
                if len(self._gaps) > WINDOW:
                    self._gap_sum -= self._gaps.popleft()
                self._outcome(True)

    def age(self, now: float) -> None:
        """Decay every count to `now`; forget answers FORGET_AFTER think times old."""
        if now > self._at:
            step = (now - self._at) / self.think_s
            self._clock += step
            factor = math.exp(-step)
            for view in self._views:
                view.open_conversations *= factor
            self._at = now
        while self._open:
            block, (_, _, clock_then, _) = next(iter(self._open.items()))
            if self._clock - clock_then <= FORGET_AFTER:
                break
            self._close(block)
            self._outcome(False)

    def _outcome(self, is_continued: bool) -> None:
        self._outcomes.append(is_continued)
        self._num_continued += is_continued
        if len(self._outcomes) > WINDOW:
            self._num_continued -= self._outcomes.popleft()

    def _close(self, block: int) -> None:
        view, _, clock_then, weight = self._open.pop(block, (None, 0.0, 0.0, 0.0))
        if view is None:
            return
        self._num_open[view.name] -= 1
        if self._num_open[view.name]:
            left = weight * math.exp(clock_then - self._clock)
            view.open_conversations = max(0.0, view.open_conversations - left)
        else:
            view.open_conversations = 0.0  # no rounding left over
