"""Incremental span checking: redact, block and flag as text arrives, holding back the least.

`SpanChecker.feed(delta)` returns the text that is safe to send now;
`finish()` returns the rest when the stream ends. Whole texts go through the
same two calls, so a streamed completion is always byte-for-byte the
non-streamed one, however the deltas are cut.

What is held back: for every span rule, the text from the start of the
earliest place where a match could still begin or grow (the `regex` module's
partial matching says whether the text at the end could be the prefix of a
match, and whether a complete match could still grow into a longer one). Everything
before the earliest such place across all rules is settled and sent. So a
stream of prose holds back about one word; a digit run that might become a
card number is held until it ends. Every pattern is bounded (`max_len`,
checked when the policy loads), so the hold-back never exceeds the longest
possible match and the stream never stalls.

Matches of different rules that overlap merge into one placeholder (the one
of the earliest match). A block match ends the text just before it.

Patterns match the `normalise`d text; positions map back to the text as received,
so a placeholder replaces the original characters, zero-width ones inside the
match included. The hold-back bound counts normalised characters.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

from ownllm.gateway.guard.detectors import normalise
from ownllm.gateway.guard.rules import Rule


class SpanChecker:
    """Applies the span rules (built-in, regex, deny_terms) of one stage to one text."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(r for r in rules if r.span is not None)
        self.max_hold = max((r.span.max_len for r in self.rules), default=0)
        self.text = ""  # as received
        self._norm = ""  # as the detectors read it; every position below but _cursor is in it
        self._source: list[int] | None = None  # index in text of each _norm char; None: same
        self.counts: Counter[str] = Counter()
        self.blocked_by: Rule | None = None
        self._block_at: int | None = None
        self._pos = [0] * len(self.rules)
        self._spans: list[tuple[int, int, int, Rule]] = []  # heap of (start, -end, order, rule)
        self._cursor = 0  # text (received) before this is sent or replaced by a placeholder
        self._is_finished = False

    @property
    def num_held(self) -> int:
        """Characters received but not yet settled (sent or redacted)."""
        return max(0, len(self.text) - self._cursor)

    @property
    def is_blocked(self) -> bool:
        return self.blocked_by is not None

    def feed(self, delta: str) -> str:
        if self._is_finished or self.is_blocked:
            return ""
        self._append(delta)
        settled = self._scan(len(self._norm), partial=True)
        if self.is_blocked:
            return self._finish_at(self._block_at)
        return self._emit(self._received(settled))

    def finish(self) -> str:
        """The remaining text, checked as if the stream ended here."""
        if self._is_finished:
            return ""
        return self._finish_at(self._block_at if self.is_blocked else len(self._norm))

    def _append(self, delta: str) -> None:
        norm, source = normalise(delta)
        if source is not None or self._source is not None:
            if self._source is None:
                self._source = list(range(len(self._norm)))
            base = len(self.text)
            if source is None:
                self._source.extend(range(base, base + len(delta)))
            else:
                self._source.extend(base + i for i in source)
        self.text += delta
        # while nothing needed normalising, the two are one string (no second copy to grow)
        self._norm = self.text if self._source is None else self._norm + norm

    def _received(self, pos: int) -> int:
        """Where the normalised character at `pos` starts in the received text."""
        if self._source is None:
            return pos
        return self._source[pos] if pos < len(self._source) else len(self.text)

    def _received_end(self, end: int) -> int:
        """Where a normalised match ending at `end` ends in the received text."""
        if self._source is None or end == 0:
            return end
        return self._source[end - 1] + 1

    def _finish_at(self, end: int) -> str:
        self._scan(end, partial=False)  # what is left can no longer grow: settle it
        if self._block_at is not None:
            end = min(end, self._block_at)
        self._is_finished = True
        return self._emit(self._received(end))

    def _scan(self, endpos: int, partial: bool) -> int:
        """Find the settled matches of every rule up to `endpos`; return where the unsettled
        text starts (the earliest place a match could still begin or grow)."""
        settled = endpos
        for i, rule in enumerate(self.rules):
            if self._pos[i] >= endpos:
                continue
            resume = endpos  # no match can begin before endpos any more ...
            for m in rule.span.finditer(self._norm, self._pos[i], endpos, partial=partial):
                if partial and (m.partial or m.end() == endpos or self._may_grow(rule, m, endpos)):
                    resume = m.start()  # ... except this one, which may still begin or grow
                    break
                if rule.span.validate is None or rule.span.validate(m.group()):
                    self._hit(i, rule, m.start(), m.end())
            self._pos[i] = resume
            settled = min(settled, resume)
        return settled

    def _may_grow(self, rule: Rule, m, endpos: int) -> bool:
        """True when more text could turn this complete match into a longer one (a greedy
        optional part such as the space in `DE89 3704 ` stopped at the end of the text)."""
        return rule.span.pattern.fullmatch(self._norm, m.start(), endpos, partial=True) is not None

    def _hit(self, order: int, rule: Rule, start: int, end: int) -> None:
        if rule.action == "redact":  # counted when emitted, unless another span covers it
            span = (self._received(start), -self._received_end(end), order, rule)
            heapq.heappush(self._spans, span)
            return
        self.counts[rule.id] += 1
        if rule.action == "block" and (self._block_at is None or start < self._block_at):
            self._block_at, self.blocked_by = start, rule

    def _emit(self, limit: int) -> str:
        """Send received text up to `limit`, replacing redacted spans that start before it."""
        out = []
        while self._spans and self._spans[0][0] < limit:
            start, neg_end, _, rule = heapq.heappop(self._spans)
            if start < self._cursor:  # overlaps the span just replaced: widen it
                if -neg_end > self._cursor:
                    self.counts[rule.id] += 1
                    self._cursor = -neg_end
                continue
            self.counts[rule.id] += 1
            out.append(self.text[self._cursor : start])
            out.append(rule.placeholder)
            self._cursor = -neg_end
        if self._cursor < limit:
            out.append(self.text[self._cursor : limit])
            self._cursor = limit
        return "".join(out)


def check_spans(rules: Sequence[Rule], text: str) -> tuple[str, SpanChecker]:
    """Run the span rules over a whole text: (the text to send or store, the checker)."""
    checker = SpanChecker(rules)
    return checker.feed(text) + checker.finish(), checker
