"""`ownllm cost`: self-hosted cost vs paid APIs for the traffic in the ledger, and
`--scenario` to project a year ("users=1000000,requests_per_user=10,input_tokens=400,
output_tokens=200"), sized from the saturated capacity `ownllm bench capacity` stored (the
output says which throughput figure it used, and shows the others). Prices come from the
dated table named in the output.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--since", help="window start: 30d, 24h, a date (default: the first request in the ledger)"
    )
    parser.add_argument("--until", help="window end (default now)")
    parser.add_argument("--hardware", help="hardware preset of the price table (cpu-small, h100)")
    parser.add_argument("--price-per-hour", type=float, help="your price of one box per hour")
    parser.add_argument("--replicas", type=int, help="boxes you pay for")
    parser.add_argument("--price-table", metavar="TOML", help="your price table")
    parser.add_argument(
        "--scenario",
        help="project a year: users=N,requests_per_user=N (per day),input_tokens=N,"
        "output_tokens=N[,peak=2]",
    )
    parser.add_argument(
        "--throughput",
        type=float,
        metavar="TOKENS_PER_S",
        help="tokens/s one box serves (default: the capacity `ownllm bench capacity` "
        "measured, else the hardware preset's assumed figure, else the ledger's busy time)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def money(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value and value < 0.01:
        return f"{sign}${value:.6f}"
    return f"{sign}${value:,.2f}"


def tokens(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.1f}{unit}"
    return f"{value:,.0f}"


def mark(api) -> str:
    """What the output says beside a price: its check date, or that it is unconfirmed."""
    return f"checked {api.checked}" if api.confirmed else "unconfirmed"


def price_notes(table) -> list[str]:
    """The closing lines: where the prices come from, and every page still to check."""
    from ownllm.gateway.cost import unconfirmed_sources

    lines = [f"\nAPI prices from {table.path} (as of {table.as_of})."]
    pages = unconfirmed_sources(table.apis)
    if pages:
        lines.append("UNCONFIRMED prices (typed by hand, not checked against their pages): check")
        lines += [f"  {url}  ({', '.join(names)})" for url, names in pages.items()]
    return lines


def format_account(acc, table, since_text: str) -> str:
    t, hw = acc.traffic, acc.hardware
    lines = [
        f"Traffic since {since_text}: {t.requests:,} requests, {tokens(t.prompt_tokens)} input + "
        f"{tokens(t.completion_tokens)} output tokens over {t.window_s / 3600:,.1f} h.",
        f"Hardware: {hw.replicas} × {hw.name} at {money(hw.price_per_hour)}/h "
        f"({hw.source or 'no source'}{', ' + hw.as_of if hw.as_of else ''}) → "
        f"{money(acc.hardware_cost)} for the window.",
    ]
    if acc.utilisation is not None:
        lines.append(
            f"Engine busy {t.busy_s / 3600:,.2f} h → utilisation {acc.utilisation:.1%}; "
            f"measured throughput {t.throughput_tps:,.0f} tokens/s per box."
        )
    else:
        lines.append("Engine busy time: none recorded yet (serve traffic with `ownllm serve`).")
    lines.append(
        f"Self-hosted: {money(acc.cost_per_million)} per 1M tokens at the observed "
        f"utilisation; {money(acc.cost_per_million_at_full)} per 1M if fully busy."
    )
    if t.remote_requests:
        unpriced = (
            f"; {t.remote_unpriced:,} unpriced (no price table entry)" if t.remote_unpriced else ""
        )
        lines.append(
            f"Remote APIs (the hybrid route): {t.remote_requests:,} requests, "
            f"{tokens(t.remote_tokens)} tokens, {money(t.remote_cost_usd)} at the price "
            f"table's list prices{unpriced}; self-hosted cost above is over the other "
            f"{tokens(t.local_tokens)} tokens."
        )
    lines += ["", f"{'API':<24}{'same traffic':>14}{'savings':>14}  break-even per box"]
    for c in acc.comparisons:
        reach = "" if c.is_reachable else " (beyond one box's capacity: the API stays cheaper)"
        lines.append(
            f"{c.api.name:<24}{money(c.api_cost):>14}{money(c.savings):>14}  "
            f"{tokens(c.break_even_tokens_per_month)} tokens/month{reach} [{mark(c.api)}]"
        )
    if t.batch_lines:
        lines += [
            "",
            f"Batch lines (/v1/batches): {t.batch_lines:,} lines of {t.batches:,} "
            f"batch{'es' if t.batches != 1 else ''}, {tokens(t.batch_prompt_tokens)} input + "
            f"{tokens(t.batch_completion_tokens)} output tokens; priced above at each API's "
            "batch price. What the batches saved against the same lines on each API "
            "(self-hosted: their share of the hardware cost, by tokens):",
            f"{'API':<24}{'batch price':>14}{'list price':>14}{'self-hosted':>14}"
            f"{'batch saved':>14}",
        ]
        for b in acc.batch_savings:
            tier = "" if b.api.has_batch_price else " (no batch tier: list price)"
            lines.append(
                f"{b.api.name:<24}{money(b.at_batch_price):>14}{money(b.at_list_price):>14}"
                f"{money(b.self_hosted):>14}{money(b.saved):>14}  [{mark(b.api)}]{tier}"
            )
    if t.embedding_tokens:
        lines += [
            "",
            f"Embeddings: {tokens(t.embedding_tokens)} input tokens, not in the figures above "
            "(the embedding model runs beside the engine).",
        ]
        lines += [
            f"{e.api.name:<24}{money(e.api_cost):>14}  (unconfirmed: check "
            f"{e.api.source or 'no source'}, {e.api.as_of or 'undated'})"
            for e in acc.embedding_costs
        ]
    lines += price_notes(table)
    return "\n".join(lines)


def throughput_lines(figures, scenario, capacity=None) -> list[str]:
    """Which throughput sized the boxes and why, and every other figure beside it: the
    saturated capacity and the light-load busy-time figure are both always shown."""
    from ownllm.gateway.cost import ASSUMED, BUSY_TIME, CAPACITY, GIVEN, MEASURE_HINT

    used, kinds = figures[0], {f.kind for f in figures}
    lines = [
        f"Throughput: {used.tokens_per_s:,.0f} tokens/s per box, used for this answer "
        f"({used.note})."
    ]
    if used.kind in (ASSUMED, BUSY_TIME):
        what = "an assumed figure" if used.kind == ASSUMED else "the light-load busy-time figure"
        lines.append(
            f"  No capacity measured for this model on this server, so the answer uses {what}"
            f"{': it oversizes' if used.kind == BUSY_TIME else ''}; {MEASURE_HINT}."
        )
    if used.kind == CAPACITY and capacity is not None:
        measured = capacity.output_tokens_per_request / (
            capacity.input_tokens_per_request + capacity.output_tokens_per_request
        )
        total = scenario.input_tokens + scenario.output_tokens
        if abs(scenario.output_tokens / total - measured) > 0.1:
            lines.append(
                f"  The scenario's mix ({scenario.input_tokens} in + {scenario.output_tokens} "
                f"out) differs from the measured one; for its own figure: ownllm bench "
                f"capacity --input-tokens {scenario.input_tokens} --output-tokens "
                f"{scenario.output_tokens}."
            )
    for f in figures[1:]:
        lines.append(f"  Not used: {f.tokens_per_s:,.0f} tokens/s ({f.note}).")
    if CAPACITY not in kinds and used.kind == GIVEN:
        lines.append(f"  Capacity: none measured on this server; {MEASURE_HINT}.")
    if BUSY_TIME not in kinds:
        lines.append("  Light-load busy-time figure: none (no engine busy time in the ledger).")
    return lines


def format_projection(p, table, figures, capacity=None) -> str:
    s, hw = p.scenario, p.hardware
    lines = [
        f"Scenario: {s.users:,} users × {s.requests_per_user:g} requests/day × "
        f"({s.input_tokens} in + {s.output_tokens} out) tokens = "
        f"{tokens(s.requests_per_day)} requests, "
        f"{tokens(s.input_tokens_per_day + s.output_tokens_per_day)} tokens per day.",
        *throughput_lines(figures, s, capacity),
        f"Hardware needed: {p.boxes:,} × {hw.name} at {money(hw.price_per_hour)}/h, sized for "
        f"peak = {s.peak:g} × average (average utilisation {p.utilisation:.0%}).",
        f"Self-hosted: {money(p.self_per_day)}/day, {money(p.self_per_year)}/year, "
        f"{money(p.self_cost_per_million)} per 1M tokens.",
        "",
        f"{'API':<24}{'per day':>14}{'per year':>16}{'self-hosted saves/year':>24}"
        f"{'batch price/year':>18}",
    ]
    for a in p.apis:
        lines.append(
            f"{a.api.name:<24}{money(a.per_day):>14}{money(a.per_year):>16}"
            f"{money(a.savings_per_year):>24}{money(a.batch_per_year):>18}  [{mark(a.api)}]"
        )
    lines += price_notes(table)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ownllm.cli.common import ConfigError, config_from_args, fail
    from ownllm.errors import OwnLLMError
    from ownllm.gateway import cost
    from ownllm.gateway.usage import parse_since

    overrides = {
        "hardware": args.hardware,
        "hardware_price_per_hour": args.price_per_hour,
        "replicas": args.replicas,
        "price_table": args.price_table,
    }
    try:
        config = config_from_args(args, {"cost": overrides})
        table = cost.load_price_table(config.cost.price_table or None)
        hardware = cost.hardware_from_config(config.cost, table)
        scenario = cost.parse_scenario(args.scenario) if args.scenario else None
        since, until = parse_since(args.since), parse_since(args.until)
    except (ConfigError, cost.CostError) as e:
        return fail(str(e))
    except OwnLLMError as e:
        return fail(e.message)
    from ownllm.store.db import Database, DatabaseError

    try:
        db = Database.open(config.store.url)
    except DatabaseError as e:
        return fail(str(e))
    try:
        traffic = cost.observed_traffic(db, since, until)
    finally:
        db.close()
    if scenario is None:
        acc = cost.account(traffic, hardware, table)
        if args.json:
            print(json.dumps(asdict(acc), default=str, indent=2))
        else:
            print(format_account(acc, table, args.since or "the first request"))
        return 0
    measured = stored_capacity(config)
    figures = cost.throughput_figures(
        given=args.throughput,
        capacity=measured,
        hardware=hardware,
        traffic=traffic,
        since_text=args.since or "the first request",
    )
    if not figures:
        return fail(
            "no throughput to size boxes with: no capacity measured on this server, no "
            f"figure in the {hardware.name} preset and no engine busy time in the ledger; "
            f"{cost.MEASURE_HINT}, or pass --throughput TOKENS_PER_S"
        )
    used = figures[0]
    try:
        projection = cost.project(scenario, replace(hardware), table, used.tokens_per_s, used.note)
    except cost.CostError as e:
        return fail(str(e))
    if args.json:
        body = asdict(projection) | {"throughput_figures": [asdict(f) for f in figures]}
        print(json.dumps(body, default=str, indent=2))
    else:
        print(format_projection(projection, table, figures, measured))
    return 0


def stored_capacity(config):
    """The newest `ownllm bench capacity` run of the served model (and its dtype, when the
    config names one) in the data dir, or None."""
    from ownllm.gateway import capacity
    from ownllm.models import resolve_model
    from ownllm.models.catalog import ModelLoadError

    try:
        model = resolve_model(config.model.model, config.model.name).id
    except ModelLoadError:
        model = config.model.name or config.model.model
    dtype = "" if config.model.dtype == "auto" else config.model.dtype
    return capacity.newest(capacity.load(config.store.home), model, dtype)
