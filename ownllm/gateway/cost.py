"""The cost account: what self-hosting costs per million tokens, what the same traffic
would cost on paid APIs, the savings, and the break-even volume; and a one-year
projection for a scenario ("a million users, ten requests a day each").

Inputs, all visible in the output:
- prices of paid APIs and hardware presets from a dated TOML table (the shipped
  `prices.toml`, or `[cost] price_table`), each with its source URL and date;
- the hardware price per hour (`[cost] hardware` preset or `hardware_price_per_hour`) and
  the number of boxes paid for (`[cost] replicas`);
- the traffic in the usage ledger (prompt and completion tokens of every request) and
  the engine's busy time (`engine_time`, sampled from `backend.stats()`).

Self-hosted cost is the hardware paid for the whole window (idle hours cost the same as
busy ones) divided by the tokens served; "at full utilisation" divides by what the box
could serve at the measured throughput (tokens per engine-busy second).

Embeddings are counted apart: their tokens are input only, priced by embedding APIs
(`[embedding.NAME]` in the table) far below chat input, and the embedding model runs
beside the engine, outside its busy time. So `/v1/embeddings` tokens are left out of the
chat comparison, the per-token cost and the throughput, and priced on their own.

Lines of `/v1/batches` (ledger rows whose `batch_id` is a batch's) are priced at each
API's batch price (`batch_input`, `batch_output`: the half-price batch tiers), the rest
at its list price; the account also shows what the batch lines would have cost on each
API against their share of the hardware. Every price is marked unconfirmed unless its
entry says `status = "confirmed"` with the date it was `checked` against the source page.
Left out: power and staff costs (put them in your price per hour), cached-input
discounts, batch embeddings' discount, the quality difference between your model and
theirs.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED_PRICE_TABLE = Path(__file__).with_name("prices.toml")
EMBEDDINGS = "embeddings"  # the ledger's endpoint of /v1/embeddings
BATCH_ID_PREFIX = "batch_"  # a /v1/batches line's ledger batch_id (eval runs mark theirs too)
HOURS_PER_MONTH = 730.0  # 8760 / 12
DAYS_PER_YEAR = 365


class CostError(ValueError):
    """The price table or a scenario cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class ApiPrice:
    name: str
    provider: str
    input: float  # USD per 1M input tokens
    output: float  # USD per 1M output tokens
    source: str
    as_of: str
    batch_input: float | None = None  # the API's batch price; None: it sells no batch tier
    batch_output: float | None = None
    batch_source: str = ""
    checked: str = ""  # the date the prices were checked against the source; "": unconfirmed

    @property
    def confirmed(self) -> bool:
        return bool(self.checked)

    @property
    def has_batch_price(self) -> bool:
        return self.batch_input is not None and self.batch_output is not None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6

    def batch_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """At the batch price (the list price where the API has no batch tier)."""
        if not self.has_batch_price:
            return self.cost(prompt_tokens, completion_tokens)
        return (prompt_tokens * self.batch_input + completion_tokens * self.batch_output) / 1e6


@dataclass(frozen=True)
class EmbeddingPrice:
    name: str
    provider: str
    input: float  # USD per 1M input tokens (embeddings have no output)
    source: str
    as_of: str

    def cost(self, tokens: float) -> float:
        return tokens * self.input / 1e6


@dataclass(frozen=True)
class HardwarePrice:
    name: str
    description: str
    price_per_hour: float
    source: str
    as_of: str
    throughput: float = 0.0  # tokens/s (prompt + completion) one box serves; 0: none given
    throughput_note: str = ""  # for which model, and where the figure comes from


@dataclass(frozen=True)
class PriceTable:
    path: str
    as_of: str
    apis: tuple[ApiPrice, ...]
    hardware: dict[str, HardwarePrice]
    embeddings: tuple[EmbeddingPrice, ...] = ()


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Read a price table (the shipped one when `path` is empty)."""
    path = Path(path) if path else SHIPPED_PRICE_TABLE
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CostError(f"cannot read price table {str(path)!r}: {e}") from None
    try:
        apis = tuple(
            ApiPrice(
                name,
                str(v.get("provider", "")),
                float(v["input"]),
                float(v["output"]),
                str(v.get("source", "")),
                str(v.get("as_of", data.get("as_of", ""))),
                float(v["batch_input"]) if "batch_input" in v else None,
                float(v["batch_output"]) if "batch_output" in v else None,
                str(v.get("batch_source", "")),
                _checked(name, v),
            )
            for name, v in data.get("api", {}).items()
        )
        hardware = {
            name: HardwarePrice(
                name,
                str(v.get("description", name)),
                float(v["price_per_hour"]),
                str(v.get("source", "")),
                str(v.get("as_of", data.get("as_of", ""))),
                float(v.get("throughput", 0.0)),
                str(v.get("throughput_note", "")),
            )
            for name, v in data.get("hardware", {}).items()
        }
        embeddings = tuple(
            EmbeddingPrice(
                name,
                str(v.get("provider", "")),
                float(v["input"]),
                str(v.get("source", "")),
                str(v.get("as_of", data.get("as_of", ""))),
            )
            for name, v in data.get("embedding", {}).items()
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CostError(f"price table {str(path)!r}: bad entry ({e})") from None
    if not apis:
        raise CostError(f"price table {str(path)!r} has no [api.NAME] entries")
    return PriceTable(str(path), str(data.get("as_of", "")), apis, hardware, embeddings)


def _checked(name: str, entry: dict) -> str:
    """An entry's check date: `status = "confirmed"` needs `checked = "YYYY-MM-DD"`; anything
    else (the shipped table's `status = "unconfirmed"`, or no status) is unconfirmed."""
    status = str(entry.get("status", "unconfirmed"))
    if status not in ("confirmed", "unconfirmed"):
        raise ValueError(f"{name}: status is confirmed or unconfirmed, not {status!r}")
    checked = str(entry.get("checked", ""))
    if status == "confirmed" and not checked:
        raise ValueError(f"{name}: status confirmed needs checked = the date it was checked")
    return checked if status == "confirmed" else ""


def unconfirmed_sources(apis) -> dict[str, list[str]]:
    """Source page to check -> the unconfirmed entries it prices (list and batch pages)."""
    pages: dict[str, list[str]] = {}
    for api in apis:
        if api.confirmed:
            continue
        for url in filter(None, (api.source, api.batch_source if api.has_batch_price else "")):
            pages.setdefault(url, []).append(api.name)
    return pages


@dataclass(frozen=True)
class Hardware:
    """What one serving box costs, and how many are paid for."""

    name: str
    price_per_hour: float
    replicas: int = 1
    source: str = ""
    as_of: str = ""
    throughput: float = 0.0  # the preset's figure (tokens/s per box); 0: none
    throughput_note: str = ""

    @property
    def price_per_month(self) -> float:
        return self.price_per_hour * HOURS_PER_MONTH


def hardware_from_config(cost_config: Any, table: PriceTable) -> Hardware:
    preset = table.hardware.get(cost_config.hardware)
    if cost_config.hardware_price_per_hour > 0:
        name = cost_config.hardware if preset else "custom"
        return Hardware(
            name,
            cost_config.hardware_price_per_hour,
            cost_config.replicas,
            "your [cost] hardware_price_per_hour",
            "",
            preset.throughput if preset else 0.0,
            preset.throughput_note if preset else "",
        )
    if preset is None:
        known = ", ".join(table.hardware) or "none"
        raise CostError(
            f"cost.hardware = {cost_config.hardware!r} is not in the price table "
            f"{table.path} (presets: {known}); set cost.hardware_price_per_hour instead"
        )
    return Hardware(
        preset.name,
        preset.price_per_hour,
        cost_config.replicas,
        preset.source,
        preset.as_of,
        preset.throughput,
        preset.throughput_note,
    )


# -- observed traffic ------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Tokens served in a window, and how long the engine was busy serving them."""

    prompt_tokens: int  # chat and completions
    completion_tokens: int
    requests: int  # every endpoint
    window_s: float
    busy_s: float
    embedding_tokens: int = 0  # input tokens of /v1/embeddings
    remote_requests: int = 0  # served by a remote = true backend (the hybrid route)
    remote_tokens: int = 0  # their prompt + completion tokens (in the totals above too)
    remote_cost_usd: float = 0.0  # their price from the price table when written
    remote_unpriced: int = 0  # remote requests whose model the price table lacked
    batch_prompt_tokens: int = 0  # lines of /v1/batches (chat and completions; in the totals)
    batch_completion_tokens: int = 0
    batch_lines: int = 0
    batches: int = 0

    @property
    def batch_tokens(self) -> int:
        return self.batch_prompt_tokens + self.batch_completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def local_tokens(self) -> int:
        """Tokens the self-hosted replicas served (what the hardware paid for)."""
        return self.total_tokens - self.remote_tokens

    @property
    def throughput_tps(self) -> float | None:
        """Tokens (prompt + completion) per engine-busy second, at the observed mix."""
        return self.local_tokens / self.busy_s if self.busy_s > 0 else None


def observed_traffic(
    db: Any, since: float | None = None, until: float | None = None, now: float | None = None
) -> Traffic:
    """Ledger totals and engine busy time between `since` (default: the first request) and
    `until` (default: now). Busy time is kept per day, so a window starting mid-day counts
    that whole day's busy time."""
    from sqlalchemy import case, func, select

    from ownllm.gateway.usage import day_of
    from ownllm.store.schema import EngineTime as E
    from ownllm.store.schema import UsageRecord as U

    now = time.time() if now is None else now

    def tokens(column: Any, is_embedding: bool) -> Any:
        picked = U.endpoint == EMBEDDINGS if is_embedding else U.endpoint != EMBEDDINGS
        return func.coalesce(func.sum(case((picked, column), else_=0)), 0)

    query = select(
        tokens(U.prompt_tokens, False),
        tokens(U.completion_tokens, False),
        func.count(),
        func.min(U.created_at),
        tokens(U.prompt_tokens, True),
    )
    busy = select(func.coalesce(func.sum(E.busy_seconds), 0.0))
    is_remote = U.remote.is_(True)
    remote = select(
        func.count(),
        func.coalesce(func.sum(U.prompt_tokens + U.completion_tokens), 0),
        func.coalesce(func.sum(U.remote_cost_usd), 0.0),
        func.coalesce(func.sum(case((U.remote_cost_usd.is_(None), 1), else_=0)), 0),
    ).where(is_remote)
    if since is not None:
        query = query.where(U.created_at >= since)
        remote = remote.where(U.created_at >= since)
        busy = busy.where(E.day >= day_of(since))
    if until is not None:
        query = query.where(U.created_at < until)
        remote = remote.where(U.created_at < until)
        busy = busy.where(E.day <= day_of(until))
    is_batch_line = U.batch_id.startswith(BATCH_ID_PREFIX, autoescape=True)
    batch = select(
        func.coalesce(func.sum(U.prompt_tokens), 0),
        func.coalesce(func.sum(U.completion_tokens), 0),
        func.count(),
        func.count(func.distinct(U.batch_id)),
    ).where(is_batch_line, U.endpoint != EMBEDDINGS)
    if since is not None:
        batch = batch.where(U.created_at >= since)
    if until is not None:
        batch = batch.where(U.created_at < until)
    with db.session() as session:
        prompt, completion, requests, first_at, embedded = session.execute(query).one()
        busy_s = float(session.execute(busy).scalar_one())
        num_remote, remote_tokens, remote_cost, unpriced = session.execute(remote).one()
        batch_prompt, batch_completion, batch_lines, batches = session.execute(batch).one()
    start = since if since is not None else (first_at if first_at is not None else now)
    end = until if until is not None else now
    window_s = max(0.0, end - start)
    return Traffic(
        int(prompt),
        int(completion),
        int(requests),
        window_s,
        busy_s,
        int(embedded),
        int(num_remote),
        int(remote_tokens),
        float(remote_cost),
        int(unpriced),
        int(batch_prompt),
        int(batch_completion),
        int(batch_lines),
        int(batches),
    )


# -- the account -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiComparison:
    api: ApiPrice
    api_cost: float  # the same traffic on this API
    savings: float  # api_cost - self-hosted cost (negative: the API was cheaper)
    break_even_tokens_per_month: float  # per box, at the observed input/output mix
    is_reachable: bool  # one box can serve the break-even volume at the measured throughput


@dataclass(frozen=True)
class BatchSaving:
    """The window's /v1/batches lines on one API, against what they cost here."""

    api: ApiPrice
    at_batch_price: float  # the same lines at the API's batch price (its list price if none)
    at_list_price: float
    self_hosted: float  # the lines' share of the hardware cost (by tokens served)
    saved: float  # at_batch_price - self_hosted


@dataclass(frozen=True)
class EmbeddingCost:
    api: EmbeddingPrice
    api_cost: float  # the window's embedding tokens on this API


@dataclass(frozen=True)
class Account:
    traffic: Traffic
    hardware: Hardware
    hardware_cost: float
    cost_per_million: float | None  # at the observed utilisation
    utilisation: float | None  # engine busy / hours paid
    cost_per_million_at_full: float | None  # if the boxes were busy all the time
    comparisons: list[ApiComparison] = field(default_factory=list)
    embedding_costs: list[EmbeddingCost] = field(default_factory=list)
    batch_savings: list[BatchSaving] = field(default_factory=list)


def account(traffic: Traffic, hardware: Hardware, table: PriceTable) -> Account:
    hours = traffic.window_s / 3600.0
    hardware_cost = hardware.price_per_hour * hardware.replicas * hours
    millions = traffic.local_tokens / 1e6  # remote tokens were paid for at the remote
    tps = traffic.throughput_tps
    full = hardware.price_per_hour / (tps * 3600 / 1e6) if tps else None
    paid_s = traffic.window_s * hardware.replicas
    utilisation = min(1.0, traffic.busy_s / paid_s) if paid_s > 0 and traffic.busy_s else None
    in_share = traffic.prompt_tokens / traffic.total_tokens if traffic.total_tokens else 0.5
    capacity = tps * 3600 * HOURS_PER_MONTH if tps else None
    comparisons = []
    t = traffic
    live_prompt = t.prompt_tokens - t.batch_prompt_tokens
    live_completion = t.completion_tokens - t.batch_completion_tokens
    share = t.batch_tokens / t.local_tokens if t.local_tokens else 0.0
    batch_savings = []
    for api in table.apis if t.batch_lines else ():
        at_batch = api.batch_cost(t.batch_prompt_tokens, t.batch_completion_tokens)
        self_hosted = hardware_cost * min(1.0, share)
        batch_savings.append(
            BatchSaving(
                api,
                at_batch,
                api.cost(t.batch_prompt_tokens, t.batch_completion_tokens),
                self_hosted,
                at_batch - self_hosted,
            )
        )
    for api in table.apis:
        # batch lines at the API's batch price: what the same work would have cost there
        api_cost = api.cost(live_prompt, live_completion) + api.batch_cost(
            t.batch_prompt_tokens, t.batch_completion_tokens
        )
        blended = (in_share * api.input + (1 - in_share) * api.output) / 1e6  # USD per token
        break_even = hardware.price_per_month / blended if blended > 0 else math.inf
        reachable = capacity is None or break_even <= capacity
        comparisons.append(
            ApiComparison(api, api_cost, api_cost - hardware_cost, break_even, reachable)
        )
    return Account(
        traffic=traffic,
        hardware=hardware,
        hardware_cost=hardware_cost,
        cost_per_million=hardware_cost / millions if millions else None,
        utilisation=utilisation,
        cost_per_million_at_full=full,
        comparisons=comparisons,
        embedding_costs=[
            EmbeddingCost(e, e.cost(traffic.embedding_tokens)) for e in table.embeddings
        ],
        batch_savings=batch_savings,
    )


# -- a scenario, projected over a year -------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    users: int
    requests_per_user: float  # per user per day
    input_tokens: int  # per request
    output_tokens: int  # per request
    peak: float = 2.0  # peak / average load: the boxes are sized for the peak

    @property
    def requests_per_day(self) -> float:
        return self.users * self.requests_per_user

    @property
    def input_tokens_per_day(self) -> float:
        return self.requests_per_day * self.input_tokens

    @property
    def output_tokens_per_day(self) -> float:
        return self.requests_per_day * self.output_tokens


_SCENARIO_KEYS = {
    "users": int,
    "requests_per_user": float,
    "input_tokens": int,
    "output_tokens": int,
    "peak": float,
}


def parse_scenario(text: str) -> Scenario:
    """`users=1000000,requests_per_user=10,input_tokens=400,output_tokens=200[,peak=2]`."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in _SCENARIO_KEYS:
            raise CostError(
                f"scenario: bad item {part!r}; use {', '.join(k + '=N' for k in _SCENARIO_KEYS)}"
            )
        try:
            values[key] = _SCENARIO_KEYS[key](raw.replace("_", "").strip())
        except ValueError:
            raise CostError(f"scenario: {key} = {raw!r} is not a number") from None
        if values[key] <= 0 and key != "input_tokens":
            raise CostError(f"scenario: {key} must be positive")
    missing = [k for k in _SCENARIO_KEYS if k != "peak" and k not in values]
    if missing:
        raise CostError(f"scenario: missing {', '.join(missing)}")
    if values.get("peak", 2.0) < 1:
        raise CostError("scenario: peak is peak/average load, at least 1")
    return Scenario(**values)


@dataclass(frozen=True)
class ApiProjection:
    api: ApiPrice
    per_day: float
    per_year: float
    savings_per_year: float  # api per year - self-hosted per year
    batch_per_year: float = 0.0  # the same tokens at the API's batch price


@dataclass(frozen=True)
class Projection:
    scenario: Scenario
    hardware: Hardware
    throughput_tps: float
    throughput_source: str
    boxes: int
    self_per_day: float
    self_per_year: float
    self_cost_per_million: float
    utilisation: float  # average load / capacity of the boxes bought
    apis: list[ApiProjection]


def project(
    scenario: Scenario,
    hardware: Hardware,
    table: PriceTable,
    throughput_tps: float,
    throughput_source: str,
) -> Projection:
    """A year of the scenario: boxes needed at the measured throughput (sized for the peak),
    what they cost, and what each API would charge for the same tokens."""
    if throughput_tps <= 0:
        raise CostError("throughput must be positive (tokens per second per box)")
    tokens_per_day = scenario.input_tokens_per_day + scenario.output_tokens_per_day
    average_tps = tokens_per_day / 86400.0
    boxes = max(1, math.ceil(average_tps * scenario.peak / throughput_tps))
    self_per_day = boxes * hardware.price_per_hour * 24
    apis = []
    for api in table.apis:
        per_day = api.cost(scenario.input_tokens_per_day, scenario.output_tokens_per_day)
        batch = api.batch_cost(scenario.input_tokens_per_day, scenario.output_tokens_per_day)
        apis.append(
            ApiProjection(
                api,
                per_day,
                per_day * DAYS_PER_YEAR,
                (per_day - self_per_day) * DAYS_PER_YEAR,
                batch * DAYS_PER_YEAR,
            )
        )
    return Projection(
        scenario=scenario,
        hardware=hardware,
        throughput_tps=throughput_tps,
        throughput_source=throughput_source,
        boxes=boxes,
        self_per_day=self_per_day,
        self_per_year=self_per_day * DAYS_PER_YEAR,
        self_cost_per_million=self_per_day / (tokens_per_day / 1e6) if tokens_per_day else 0.0,
        utilisation=average_tps / (boxes * throughput_tps),
        apis=apis,
    )


# -- which throughput sizes the boxes ---------------------------------------------------------

GIVEN, CAPACITY, ASSUMED, BUSY_TIME = "given", "capacity", "assumed", "busy-time"
MEASURE_HINT = "run `ownllm bench capacity` on the serving box (a few minutes) to measure it"


@dataclass(frozen=True)
class ThroughputFigure:
    """One figure for the tokens/s a box serves: where it comes from, in words."""

    kind: str  # GIVEN, CAPACITY (measured saturated), ASSUMED (the preset's), BUSY_TIME
    tokens_per_s: float
    note: str


def throughput_figures(
    *,
    given: float | None = None,
    capacity: Any = None,
    hardware: Hardware | None = None,
    traffic: Traffic | None = None,
    since_text: str = "the first request",
) -> list[ThroughputFigure]:
    """Every throughput figure there is, the one that sizes the boxes first: a figure
    given on the command line, else the stored saturated capacity (`ownllm bench
    capacity`), else the hardware preset's assumed figure, else the engine's busy time
    under the ledger's traffic (single-stream speed when the load was light: it
    oversizes). `capacity` is an `ownllm.gateway.capacity.Capacity` or None."""
    figures = []
    if given is not None:
        figures.append(ThroughputFigure(GIVEN, given, "given with --throughput"))
    if capacity is not None:
        figures.append(ThroughputFigure(CAPACITY, capacity.tokens_per_s, capacity.describe()))
    if hardware is not None and hardware.throughput > 0:
        note = f"ASSUMED: the {hardware.name} preset's figure"
        if hardware.throughput_note:
            note += f" ({hardware.throughput_note})"
        figures.append(ThroughputFigure(ASSUMED, hardware.throughput, note))
    if traffic is not None and traffic.throughput_tps:
        figures.append(
            ThroughputFigure(
                BUSY_TIME,
                traffic.throughput_tps,
                f"light-load busy time: {traffic.local_tokens:,} tokens in "
                f"{traffic.busy_s:,.0f} engine-busy seconds since {since_text}; under light "
                "load this is single-stream speed, not capacity",
            )
        )
    return figures
