"""Pick one replica for a request: the score, and the round-robin and least-loaded settings.

For each healthy candidate replica r serving the requested base model (affinity strategy):

    score(r) = w_adapter · A(r) + w_prefix · P(r) − w_queue · Q(r) − w_kv · K(r)

    A(r) = 1 when the request's adapter set is thought resident on r (the router's LRU of
           the last `adapter_slots` sets it routed there), else 0; 0 for the base model
    P(r) = matched / total: the share of the prompt's full blocks (a hash chain seeded with
           the tenant and the adapter set, as a replica's KV cache is keyed;
           `ownllm.gateway.routing.prefix`) that r is thought to hold
    Q(r) = q / (q + queue_scale), q = the larger of r's scraped queued + running requests
           and the requests this gateway has in flight on r (fresh between scrapes)
    K(r) = r's KV-cache use, 0..1 (vllm:kv_cache_usage_perc; ownllm's blocks used / total;
           scraped by the backend, `Backend.stats()`)

Only the replicas within two bounds are scored (after consistent hashing with bounded
loads, Mirrokni et al., and SGLang's cache-aware balance thresholds), so affinity never
piles work onto one replica:

    prefill:  p(r) <= min(p) + prefill_slack
    load:     q(r) <= load_factor × mean(q) + load_slack    (min, mean: over the candidates,
                                                            then over those within the first)

    p(r) = the prompt tokens r still has to prefill for this gateway: its requests there
           that have no first token yet, less the blocks each was thought to have cached;
           plus own_prefill × the request's own prompt tokens r is not thought to hold
           (own_prefill = 1: the prefill ahead of its first token, its TTFT estimate)

A request that arrives while its replica prefills another prompt waits the rest of that
engine step (a 1,024-token chunk is most of a second on CPU), so the prefill bound sends it
to a replica that is only decoding, at the cost of its cache. One exception: when no
replica within prefill_slack holds the request's adapter, a replica that holds it is still
taken if p(r) <= min(p) + wait(n) and q(r) <= the load bound + adapter_wait_load (a short
wait, or a few more sequences in its batch at a few ms a step each, rather than loading the
adapter and prefilling the whole prompt elsewhere), where among n candidates

    wait(n) = adapter_wait_tokens × min(1, adapter_wait_replicas / n)

A small fleet's LoRA slots hold few of the adapters in use, so a load there evicts one that
is soon needed again (and round robin's queueing, the target, is long); a large fleet's
slots hold them, and its queueing is short: the wait shrinks with n. The least prefilling
replica passes the first bound and the least loaded of those the second, so the set is
never empty. load_factor = 1 with load_slack = 0 is least-loaded with affinity breaking
the ties; large slacks give the unbounded score.

When even that exception finds no replica holding the request's adapter, it is loaded, and
the request's whole prompt prefilled, wherever the request goes; a conversation answered on
that replica whose next turn arrives meanwhile finds it prefilling, and is moved too
(another load) or waits. So the router counts each replica's open conversations c(r)
(`ownllm.gateway.routing.conversations`: answers whose next turn has not come, weighted by
the share that continue and decaying with the learned think time; `conversations = false`:
none are counted); such a request then goes, within both bounds, to the least c, then by
score, and the adapter's replica is still taken within wait(n) × (1 + c) of
the least p, c the open conversations where it would go: each conversation a move puts at
risk is worth another wait(n).

Defaults: w_adapter = 1, w_prefix = 2, w_queue = 3, w_kv = 1, queue_scale = 8,
load_factor = 1.25, load_slack = 2, prefill_slack = 50, adapter_wait_tokens = 300,
adapter_wait_replicas = 8 (wait(16) = 150, wait(64) = 37.5), adapter_wait_load = 4,
own_prefill = 0 (> 0 trades queueing p99 for TTFT p99 and fewer adapter loads),
conversations counted with a learned think time (`[routing]`; bench/RESULTS.md has the
simulation they were picked on). The highest score wins; ties go to the lower q, then round robin.

`round_robin` takes the candidates in turn; `least_loaded` takes the lowest q (then the
lowest K). Pure functions over `ReplicaView`s, no I/O: the router and the routing
simulation (bench/routing_sim.py) call the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex


@dataclass(frozen=True)
class Weights:
    adapter: float = 1.0
    prefix: float = 2.0
    queue: float = 3.0
    kv: float = 1.0
    queue_scale: float = 8.0
    load_factor: float = 1.25  # the load bound: q <= load_factor × mean q + load_slack
    load_slack: float = 2.0
    prefill_slack: float = 50.0  # the prefill bound: p <= min p + prefill_slack
    adapter_wait_tokens: float = 300.0  # ... + adapter_wait_tokens for the adapter's replica
    own_prefill: float = 0.0  # p counts this share of the request's own uncached prompt
    adapter_wait_load: float = 4.0  # the adapter's replica: load bound + adapter_wait_load
    adapter_wait_replicas: float = 8.0  # more candidates: the wait shrinks as this / n


def adapter_wait(w: Weights, n: int) -> float:
    """The adapter's wait, in prompt tokens, among `n` candidate replicas: adapter_wait_tokens
    up to adapter_wait_replicas candidates, then shrinking as adapter_wait_replicas / n (0:
    the same at every size)."""
    if w.adapter_wait_replicas <= 0 or n <= w.adapter_wait_replicas:
        return w.adapter_wait_tokens
    return w.adapter_wait_tokens * w.adapter_wait_replicas / n


@dataclass
class ReplicaView:
    """What the router knows of one replica when it scores it."""

    name: str
    prefixes: PrefixIndex
    adapters: AdapterIndex
    num_waiting: int = 0  # scraped: queued in the replica
    num_running: int = 0  # scraped: running in the replica
    kv_usage: float = 0.0  # scraped: 0..1
    num_in_flight: int = 0  # this gateway's requests on it now
    num_prefill_tokens: int = 0  # uncached prompt tokens of those without a first token yet
    open_conversations: float = 0.0  # answered here, next turn not seen yet (decaying)

    @property
    def load(self) -> int:
        return max(self.num_waiting + self.num_running, self.num_in_flight)


@dataclass(frozen=True)
class Choice:
    """The replica picked, and what it was picked for (counted in /metrics)."""

    index: int
    is_adapter_hit: bool
    num_prefix_blocks: int  # blocks of the prompt it is thought to hold


def score(view: ReplicaView, adapter_key: tuple[str, ...], hashes: Sequence[int], w: Weights):
    """(score, matched prefix blocks, adapter hit) of `view` for one request."""
    is_hit = bool(adapter_key) and adapter_key in view.adapters
    matched = view.prefixes.num_matched(hashes) if hashes else 0
    share = matched / len(hashes) if hashes else 0.0
    q = view.load
    value = (
        w.adapter * is_hit
        + w.prefix * share
        - w.queue * q / (q + w.queue_scale)
        - w.kv * min(max(view.kv_usage, 0.0), 1.0)
    )
    return value, matched, is_hit


def choose(
    views: Sequence[ReplicaView],
    adapter_key: tuple[str, ...],
    hashes: Sequence[int],
    *,
    strategy: str,
    weights: Weights,
    turn: int,
    block_tokens: int = 16,
) -> Choice:
    """The replica for one request among `views` (non-empty); `turn` is a counter the caller
    advances per request (round robin, and the last tie-break); `block_tokens`: tokens per
    prefix block, for own_prefill."""
    n = len(views)
    if strategy == "round_robin":
        i = turn % n
        return _choice(views, i, adapter_key, hashes)
    if strategy == "least_loaded":
        i = min(range(n), key=lambda j: (views[j].load, views[j].kv_usage, (j - turn) % n))
        return _choice(views, i, adapter_key, hashes)
    ahead = [float(v.num_prefill_tokens) for v in views]
    if weights.own_prefill and hashes:
        own = weights.own_prefill * block_tokens
        for j, v in enumerate(views):
            ahead[j] += own * (len(hashes) - v.prefixes.num_matched(hashes))
    least_prefill = min(ahead)
    max_prefill = least_prefill + weights.prefill_slack
    choice = _best(views, ahead, adapter_key, hashes, weights, turn, max_prefill)
    if not adapter_key or choice.is_adapter_hit:
        return choice
    wait = adapter_wait(weights, n)
    waited = _best(
        views, ahead, adapter_key, hashes, weights, turn,
        least_prefill + wait, holder_slack=weights.adapter_wait_load,
    )  # fmt: skip
    if waited.is_adapter_hit:
        return waited
    if not any(v.open_conversations for v in views):
        return choice
    # The adapter is loaded wherever the request goes: where it puts the fewest conversations
    # at risk, unless each of those is worth more wait on the adapter's replica.
    choice = _best(views, ahead, adapter_key, hashes, weights, turn, max_prefill, by_quiet=True)
    at_risk = views[choice.index].open_conversations
    if at_risk > 0:
        limit = least_prefill + wait * (1 + at_risk)
        waited = _best(
            views, ahead, adapter_key, hashes, weights, turn, limit,
            holder_slack=weights.adapter_wait_load,
        )  # fmt: skip
        if waited.is_adapter_hit:
            return waited
    return choice


def _best(
    views,
    ahead,
    adapter_key,
    hashes,
    w: Weights,
    turn: int,
    max_prefill: float,
    by_quiet: bool = False,
    holder_slack: float = 0.0,
) -> Choice:
    """The highest score among the views within both bounds (see the module docstring;
    `ahead`: each view's p); `by_quiet`: the fewest open conversations first;
    `holder_slack`: requests a view holding the adapter may run above the load bound."""
    n = len(views)
    within = [j for j in range(n) if ahead[j] <= max_prefill]
    bound = w.load_factor * sum(views[j].load for j in within) / len(within) + w.load_slack
    best = None
    for j in within:
        view = views[j]
        if view.load > bound + (holder_slack if adapter_key in view.adapters else 0.0):
            continue
        value, matched, is_hit = score(view, adapter_key, hashes, w)
        quiet = view.open_conversations if by_quiet else 0.0
        key = (quiet, -value, view.load, (j - turn) % n)
        if best is None or key < best[0]:
            best = (key, Choice(j, is_hit, matched))
    return best[1]


def _choice(views, i, adapter_key, hashes) -> Choice:
    view = views[i]
    is_hit = bool(adapter_key) and adapter_key in view.adapters
    return Choice(i, is_hit, view.prefixes.num_matched(hashes) if hashes else 0)
