"""Open conversations: what counts, how it decays, and what is learned (think time, share)."""

from __future__ import annotations

import math

import pytest

from ownllm.gateway.routing.conversations import FORGET_AFTER, INITIAL_THINK_S, OpenConversations
from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex
from ownllm.gateway.routing.scoring import ReplicaView


def views(n=2):
    return [ReplicaView(f"r{i}", PrefixIndex(100), AdapterIndex(4)) for i in range(n)]


def test_single_requests_count_nothing_until_a_conversation_is_seen_to_continue():
    vs = views()
    open_ = OpenConversations(vs)
    for i in range(5):
        open_.answered(vs[0], last_block=i, now=float(i))
    assert open_.share == 0.0 and vs[0].open_conversations == 0.0
    open_.continued([7, 3], now=6.0)  # block 3 was the last of an answered prompt
    assert open_.share == pytest.approx(1 / 2)
    open_.answered(vs[1], last_block=30, now=6.0)
    assert vs[1].open_conversations == pytest.approx(1 / 2)


def test_the_think_time_is_the_mean_gap_seen_and_the_count_decays_with_it():
    vs = views()
    open_ = OpenConversations(vs)
    assert open_.think_s == INITIAL_THINK_S
    open_.answered(vs[0], 1, now=0.0)
    open_.answered(vs[0], 2, now=0.0)
    open_.continued([1], now=2.0)
    open_.continued([2], now=4.0)
    assert open_.think_s == pytest.approx(3.0)  # (2 + 4) / 2
    assert open_.share == pytest.approx(2 / 3)
    open_.answered(vs[1], 3, now=4.0)
    assert vs[1].open_conversations == pytest.approx(2 / 3)
    open_.age(7.0)  # one think time on
    assert vs[1].open_conversations == pytest.approx(2 / 3 * math.exp(-1))
    open_.continued([3], now=7.0)  # it came back: nothing left open there
    assert vs[1].open_conversations == 0.0 and len(open_) == 0


def test_a_fixed_think_time_is_kept_and_closing_one_of_two_leaves_the_other_exactly():
    vs = views()
    open_ = OpenConversations(vs, think_s=5.0)
    open_.answered(vs[0], 1, now=0.0)
    open_.continued([1], now=1.0)  # seen to continue: share 1/2; the think time stays 5 s
    assert open_.think_s == 5.0
    open_.answered(vs[0], 2, now=1.0)
    open_.answered(vs[0], 3, now=6.0)
    open_.continued([2], now=6.0)
    assert vs[0].open_conversations == pytest.approx(open_._open[3][3])  # the newer, whole


def test_an_answer_never_continued_is_forgotten_and_lowers_the_share():
    vs = views()
    open_ = OpenConversations(vs, think_s=1.0)
    open_.answered(vs[0], 1, now=0.0)
    open_.continued([1], now=0.5)
    open_.answered(vs[0], 2, now=1.0)
    assert len(open_) == 1
    open_.age(1.0 + FORGET_AFTER + 0.1)
    assert len(open_) == 0 and vs[0].open_conversations == 0.0
    assert open_.share == pytest.approx(1 / 3)  # one continued, one forgotten


def test_what_is_remembered_is_bounded_however_long_the_think_time(monkeypatch):
    from ownllm.gateway.routing import conversations

    monkeypatch.setattr(conversations, "MAX_OPEN", 50)
    vs = views()
    open_ = OpenConversations(vs, think_s=3600.0)
    for i in range(200):
        open_.answered(vs[i % 2], last_block=i, now=float(i))
    assert len(open_) == 50
    open_.continued([199], now=300.0)  # the newest is still there to continue
    assert open_.share == pytest.approx(1 / 152)  # 150 forgotten, 1 continued


def test_the_think_time_and_share_are_learned_over_the_last_window_only(monkeypatch):
    from ownllm.gateway.routing import conversations

    monkeypatch.setattr(conversations, "WINDOW", 4)
    vs = views()
    open_ = OpenConversations(vs)
    for i, gap in enumerate([100.0, 100.0, 1.0, 2.0, 3.0, 4.0]):
        now = 1000.0 * i
        open_.answered(vs[0], last_block=i, now=now)
        open_.continued([i], now=now + gap)
    assert open_.think_s == pytest.approx(2.5)  # the last four gaps; the 100 s ones are gone
    assert open_.share == pytest.approx(4 / 5)  # four continued of the last four, + 1
