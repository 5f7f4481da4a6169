"""A router alias's accuracy and added latency, with the shipped MiniLM.

Three adapters' domains (billing and refunds, Python programming, cooking): each version's
index is built as `POST /v1/aliases` builds it (the MiniLM embeddings of its training
prompts; the threshold calibrated on them, `ownllm.adapters.routing.calibrate`, unless
`--threshold`), then held-out prompts of each domain, written apart from the training ones
(other wording, other topics of the domain), are routed with `Router.pick`. Accuracy: the
share that reached their domain's version. Off-domain prompts show what the threshold
sends to the base model. `--centroid` scores each version by its centroid instead (the
router before the index), for comparison in the same run.

Two stages (the router as `POST /v1/aliases` builds it now): each example is also indexed
by its static vector (`ownllm.models.static_embedding`, distilled from MiniLM once and
cached in `--static-dir`, the server's model cache by default), the fast margin calibrated
on the training prompts (`calibrate_fast`); a request goes by its static vector when that
is clear, else by the full forward. Reported: the two stages' picks (right / wrong / to
base), the share the static stage decided, and the full stage alone, in the same run.

Added latency per request: what `ownllm.api.calls._route` does on the request path
(`Router.route`: the static vector and, when it is unclear, the MiniLM forward on the
model's one-thread worker), timed per request over the held-out prompts, repeated, beside
the baseline of the same loop without routing (the text a request would route on, taken,
nothing embedded) and the full stage alone (every request embedded, as before);
`--process-threads` adds the embedding on the process's own torch threads from a second
thread. The alias lookup itself is there for every alias, routed or not (the router's
index is parsed once per process, `ownllm.adapters.aliases._router_of`).

    python -m bench.router_alias [--threshold T] [--repeats 10] [--centroid]
        [--static-dir DIR] [--process-threads]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ownllm.adapters.routing import (
    RoutedVersion,
    Router,
    calibrate,
    calibrate_fast,
    route_text,
    spread,
)
from ownllm.config import default_home
from ownllm.models.embedding import LazyEmbeddingModel

TRAINING = {
    "billing": [
        "Why was my credit card charged twice this month?",
        "I want a refund for my last order.",
        "How do I update the payment method on my account?",
        "My invoice shows the wrong amount.",
        "Can I get a copy of my receipt for March?",
        "I was billed after I cancelled my subscription.",
        "When will my refund arrive on my card?",
        "How do I download my invoices as PDF?",
        "The payment failed but money left my bank account.",
        "Can you change the billing address on my invoice?",
        "What is your refund policy for annual plans?",
        "I see an unknown charge from your company on my statement.",
        "How do I switch from monthly to yearly billing?",
        "Please cancel my plan and refund the unused days.",
        "Why did my subscription price go up?",
        "Can I pay by bank transfer instead of card?",
        "I need the VAT number added to my invoice.",
        "My discount code was not applied at checkout.",
        "How long does a chargeback take?",
        "I was charged in dollars instead of euros.",
    ],
    "python": [
        "How do I read a CSV file with pandas?",
        "Why does my Python script raise a KeyError?",
        "What is the difference between a list and a tuple in Python?",
        "How do I write a unit test with pytest?",
        "My for loop in Python never ends, why?",
        "How can I sort a dictionary by its values?",
        "What does the yield keyword do in Python?",
        "How do I install a package with pip in a virtual environment?",
        "Explain Python decorators with an example.",
        "How do I parse JSON from an HTTP response in Python?",
        "Why do I get IndentationError: unexpected indent?",
        "How do I use async and await with asyncio?",
        "What is a list comprehension?",
        "How do I reverse a string in Python?",
        "My Django migration fails with an IntegrityError.",
        "How can I profile a slow Python function?",
        "How do I type hint a function that returns None?",
        "What is the GIL and why does it matter for threads?",
        "How do I catch several exceptions in one except clause?",
        "How do I merge two pandas DataFrames on a column?",
    ],
    "cooking": [
        "How long should I boil an egg for a runny yolk?",
        "What can I use instead of buttermilk in pancakes?",
        "How do I make a simple tomato sauce for pasta?",
        "At what temperature should I roast a chicken?",
        "Why did my bread not rise?",
        "How do I cook rice so it is not sticky?",
        "What spices go well in a lentil curry?",
        "How do I keep fresh basil from wilting?",
        "Can I freeze homemade soup?",
        "How do I make a crispy pizza crust at home?",
        "What is the ratio of flour to water for pizza dough?",
        "How do I caramelise onions properly?",
        "How long do I bake chocolate chip cookies?",
        "What is a good marinade for grilled salmon?",
        "How do I thicken a stew without flour?",
        "How do I make vinaigrette for a salad?",
        "Why is my risotto gluey?",
        "How do I sear a steak in a pan?",
        "What vegetables can I roast together?",
        "How do I make whipped cream by hand?",
    ],
}
HELD_OUT = {
    "billing": [
        "Someone charged my Visa without permission, what do I do?",
        "I'd like my money back for the order that never arrived.",
        "Where can I find last year's invoices?",
        "The amount on my bill doesn't match the quote.",
        "Do you offer refunds if I downgrade my plan?",
        "My card was declined but I have funds.",
        "Please remove the late fee from my account.",
        "How do I get a receipt with my company's name on it?",
        "Why am I paying tax on this purchase?",
        "I cancelled yesterday and still got billed today.",
        "Can I split the payment into instalments?",
        "Your app charged me for two seats instead of one.",
        "How do I stop automatic renewal of my subscription?",
        "I want to dispute a transaction from last week.",
        "Is there a fee for paying with PayPal?",
        "The refund went to an old card that is closed.",
        "I need an invoice for my expense report.",
        "What currency will my bank statement show?",
        "Can I get a prorated credit for the outage?",
        "How do I add a purchase order number to my bill?",
    ],
    "python": [
        "How do I open a file and read it line by line in Python?",
        "What is the best way to deep copy a nested dict?",
        "My numpy array has the wrong shape after reshape.",
        "How do I run a function in parallel with multiprocessing?",
        "What does if __name__ == '__main__' mean?",
        "How do I format a float with two decimals in an f-string?",
        "TypeError: 'NoneType' object is not subscriptable, how to fix?",
        "How can I make a class iterable?",
        "What is the difference between is and == in Python?",
        "How do I call a REST API with the requests library?",
        "How do I remove duplicates from a list but keep the order?",
        "Why does my recursive function hit the recursion limit?",
        "How do I use dataclasses with default values?",
        "How do I convert a string to a datetime?",
        "What is a generator expression?",
        "How do I mock a function in my tests?",
        "How do I create a virtualenv with a specific Python version?",
        "Flask returns 405 Method Not Allowed on my POST route.",
        "How do I flatten a list of lists?",
        "How do I read environment variables in a script?",
    ],
    "cooking": [
        "How do I poach an egg without it falling apart?",
        "What's a substitute for eggs in a cake?",
        "How long does it take to bake a potato in the oven?",
        "Which herbs go well with lamb?",
        "My sourdough starter smells like acetone, is that bad?",
        "How do I make a roux for gravy?",
        "How do I stop pasta from sticking together?",
        "What is the best oil for deep frying?",
        "How do I make a quick pickle with cucumbers?",
        "How do I know when fish is cooked through?",
        "Can I use baking soda instead of baking powder?",
        "How do I make a creamy mushroom soup?",
        "What temperature do I fry chicken wings at?",
        "How do I soften butter quickly for baking?",
        "How do I make hummus without tahini?",
        "How long should dough rest in the fridge?",
        "Why are my pancakes flat?",
        "How do I braise short ribs?",
        "What goes into a classic pesto?",
        "How do I cook quinoa so it is fluffy?",
    ],
}
OFF_DOMAIN = [
    "What is the capital of Australia?",
    "Write a haiku about the sea.",
    "Who won the football world cup in 2010?",
    "How far is the moon from the earth?",
    "Recommend a good science fiction novel.",
    "What is the weather like in spring in Norway?",
    "Tell me a joke about cats.",
    "How many bones are in the human body?",
]


def cpu_flags() -> dict[str, bool]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {f: bool(re.search(rf"\b{f}\b", text)) for f in ("avx512_bf16", "avx512f", "avx2")}


def _centroid(vectors: list[list[float]]) -> tuple[float, ...]:
    dims = len(vectors[0])
    mean = [sum(v[i] for v in vectors) / len(vectors) for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in mean)) or 1.0
    return tuple(x / norm for x in mean)


def _percentiles(timings: list[float]) -> dict[str, float]:
    timings = sorted(timings)
    return {
        "p50": round(statistics.median(timings), 3),
        "p90": round(timings[int(len(timings) * 0.9)], 3),
        "p99": round(timings[int(len(timings) * 0.99)], 3),
    }


def _tally(picks: dict[str, list[str]]) -> dict[str, int]:
    """right / wrong / base counts of {domain: [picked name or "base"]}."""
    out = {"right": 0, "wrong": 0, "base": 0}
    for domain, names in picks.items():
        for name in names:
            out["right" if name == domain else "base" if name == "base" else "wrong"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=None, help="default: calibrated")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--centroid", action="store_true", help="one centroid per version")
    parser.add_argument("--static-dir", type=Path, default=Path(default_home()) / "models")
    parser.add_argument("--process-threads", action="store_true")
    args = parser.parse_args()

    import torch

    lazy = LazyEmbeddingModel(static_dir=args.static_dir)
    model = lazy.load_now()
    start = time.perf_counter()
    static = lazy.static(distill=True)
    static_load_s = time.perf_counter() - start
    versions = []
    for d, texts in TRAINING.items():
        examples = spread(texts)
        index = [tuple(v) for v in model.embed(examples)]
        if args.centroid:
            index = [_centroid(index)]
        static_index = () if args.centroid else tuple(map(tuple, static.embed(examples)))
        versions.append(RoutedVersion(f"adapter-{d}", d, tuple(index), len(texts), static_index))
    if args.threshold is None:
        # calibrated on the training data alone: the index of each version, never the centroid
        threshold = calibrate([model.embed(spread(t)) for t in TRAINING.values()])
    else:
        threshold = args.threshold
    fast: tuple[float | None, float] = (None, math.inf)
    if not args.centroid:
        fast = calibrate_fast([v.static_index for v in versions], [v.index for v in versions])
    router = Router(tuple(versions), threshold, args.threshold is None, *fast)

    def static_vector(text):
        return static.embed([text])[0]

    def full_vector(text):
        return lazy.embed_one_thread([text])[0]

    full_picks: dict[str, list[str]] = {d: [] for d in HELD_OUT}
    two_stage: dict[str, list[str]] = {d: [] for d in HELD_OUT}
    static_stage: dict[str, list[str]] = {d: [] for d in HELD_OUT}
    similarities = []
    for domain, prompts in HELD_OUT.items():
        for prompt in prompts:
            picked, sim = router.pick(full_vector(prompt))
            full_picks[domain].append(picked.name if picked else "base")
            similarities.append(sim)
            picked, _, stage = router.route(prompt, static_vector, full_vector)
            two_stage[domain].append(picked.name if picked else "base")
            if stage == "static":
                static_stage[domain].append(picked.name)
    num_held_out = sum(map(len, HELD_OUT.values()))
    off = [router.pick(full_vector(p)) for p in OFF_DOMAIN]
    off_two = [router.route(p, static_vector, full_vector) for p in OFF_DOMAIN]
    num_static = sum(map(len, static_stage.values()))

    messages = [[{"role": "user", "content": p}] for ps in HELD_OUT.values() for p in ps]
    own_threads = ThreadPoolExecutor(1)  # a second thread on the process's torch threads

    def routed_full(m):
        router.pick(full_vector(route_text(m, None) or " "))

    def routed_two_stage(m):
        router.route(route_text(m, None) or " ", static_vector, full_vector)

    def routed_own_threads(m):
        (vector,) = own_threads.submit(model.embed, [route_text(m, None) or " "]).result()
        router.pick(vector)

    def baseline(m):
        route_text(m, None)

    ways = {"baseline": baseline, "two_stage": routed_two_stage, "full_stage": routed_full}
    if args.process_threads:
        ways["full_stage_process_threads"] = routed_own_threads
    timings: dict[str, list[float]] = {w: [] for w in ways}
    for m in messages[:10]:  # warm up
        for f in ways.values():
            f(m)
    for _ in range(args.repeats):
        for m in messages:
            for way, f in ways.items():  # interleaved: the same load for each
                start = time.perf_counter()
                f(m)
                timings[way].append((time.perf_counter() - start) * 1000)
    base = _percentiles(timings["baseline"])
    result = {
        "held_out": num_held_out,
        "two_stage": _tally(two_stage),
        "two_stage_accuracy": round(_tally(two_stage)["right"] / num_held_out, 4),
        "static_stage_decided": f"{num_static}/{num_held_out}",
        "static_stage_picks": _tally(static_stage),
        "full_stage": _tally(full_picks),
        "full_stage_accuracy": round(_tally(full_picks)["right"] / num_held_out, 4),
        "confusion_two_stage": {d: dict(collections.Counter(p)) for d, p in two_stage.items()},
        "held_out_score_min": round(min(similarities), 3),
        "off_domain_to_base": f"{sum(1 for p, _ in off if p is None)}/{len(OFF_DOMAIN)}",
        "off_domain_to_base_two_stage": (
            f"{sum(1 for p, _, _ in off_two if p is None)}/{len(OFF_DOMAIN)}"
        ),
        "off_domain_static_stage_decided": sum(1 for _, _, st in off_two if st == "static"),
        "off_domain_score_max": round(max(s for _, s in off), 3),
        "scoring": "centroid" if args.centroid else "mean of the 3 nearest examples",
        "threshold": round(threshold, 4),
        "threshold_calibrated": args.threshold is None,
        "static_threshold": round(fast[0], 4) if fast[0] is not None else None,
        "fast_margin": round(fast[1], 4),
        "static_table_s": round(static_load_s, 1),
        "static_distilled": static.num_distilled > 0,
        "ms": {way: _percentiles(t) for way, t in timings.items()},
        "added_ms": {
            way: {p: round(v - base[p], 3) for p, v in _percentiles(t).items()}
            for way, t in timings.items()
            if way != "baseline"
        },
        "requests_timed": len(timings["two_stage"]),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
