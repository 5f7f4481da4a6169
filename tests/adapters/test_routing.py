"""A router's two stages, with hand-made embeddings: a clear prompt is decided by its static
vector, and to the version the full stage picks; an ambiguous one falls through to the full
forward; a router stored before the static index routes by the full stage alone."""

from __future__ import annotations

import math

from ownllm.adapters.routing import RoutedVersion, Router, calibrate, calibrate_fast

DOMAINS = {
    "billing": ("invoice", "refund", "charged", "payment"),
    "code": ("python", "function", "error", "bug"),
    "cooking": ("recipe", "oven", "bake", "sauce"),
}
TRAINING = {
    "billing": ["refund my invoice", "charged twice on my invoice", "payment refund",
                "the payment was charged"],
    "code": ["python function error", "a bug in my function", "python error",
             "the function has a bug"],
    "cooking": ["a sauce recipe", "bake it in the oven", "oven recipe", "bake a sauce"],
}  # fmt: skip


def keyword_vector(text: str, noise: float = 0.0) -> list[float]:
    """One dimension per domain (its keywords counted) and a constant one, normalised;
    `noise` tilts it towards the constant (a cruder, static-like embedding)."""
    words = text.lower().split()
    v = [float(sum(w in keys for w in words)) for keys in DOMAINS.values()] + [0.2 + noise]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def static_vector(text: str) -> list[float]:
    return keyword_vector(text, noise=0.3)


class Counting:
    """Counts the texts an embedding was asked for (the full forward is the costly one)."""

    def __init__(self, embed) -> None:
        self.embed, self.texts = embed, []

    def __call__(self, text: str) -> list[float]:
        self.texts.append(text)
        return self.embed(text)


def two_stage_router() -> Router:
    versions = tuple(
        RoutedVersion(f"ft-{d}", d, tuple(map(tuple, map(keyword_vector, texts))), len(texts),
                      tuple(map(tuple, map(static_vector, texts))))
        for d, texts in TRAINING.items()
    )  # fmt: skip
    static_threshold, margin = calibrate_fast(
        [v.static_index for v in versions], [v.index for v in versions]
    )
    threshold = calibrate([v.index for v in versions])
    return Router(versions, threshold, True, static_threshold, margin)


def test_a_clear_prompt_is_decided_by_its_static_vector_as_the_full_stage_would():
    router = two_stage_router()
    assert router.has_fast_stage
    full = Counting(keyword_vector)
    for domain, prompt in [("billing", "refund this payment"), ("code", "python bug"),
                           ("cooking", "bake in the oven")]:  # fmt: skip
        version, _, stage = router.route(prompt, static_vector, full)
        assert stage == "static" and version.name == domain
        assert router.pick(keyword_vector(prompt))[0].name == domain  # the full stage agrees
    assert full.texts == []  # no full forward ran


def test_an_ambiguous_prompt_falls_through_to_the_full_forward():
    router = two_stage_router()
    full = Counting(keyword_vector)
    # one billing word, one code word: no clear lead
    assert router.pick_fast(static_vector("refund python")) is None
    version, _, stage = router.route("refund python", static_vector, full)
    assert stage == "full" and full.texts == ["refund python"]
    # nothing near any version: the full stage decides, and sends it to the base model
    version, _, stage = router.route("tell me about the weather", static_vector, full)
    assert (version, stage) == (None, "full")
    # no static stage here (the vectors cannot be read): the full stage decides
    version, _, stage = router.route("python bug", None, full)
    assert (version.name, stage) == ("code", "full")


def test_the_stored_router_keeps_its_static_stage_and_an_old_row_routes_without_it():
    router = two_stage_router()
    stored = router.to_dict()
    again = Router.from_dict(stored)
    assert again.has_fast_stage
    assert (again.static_threshold, again.fast_margin) == (
        router.static_threshold,
        router.fast_margin,
    )
    assert again.route("python bug", static_vector, keyword_vector)[2] == "static"

    # a row from before the static stage: no static index, no "fast" key
    del stored["fast"]
    for v in stored["versions"]:
        del v["static_index"]
    old = Router.from_dict(stored)
    assert not old.has_fast_stage and "fast" not in old.to_dict()
    full = Counting(keyword_vector)
    version, _, stage = old.route("bake in the oven", static_vector, full)
    assert (version.name, stage) == ("cooking", "full") and full.texts == ["bake in the oven"]


def test_the_fast_margin_is_the_lead_of_a_training_prompt_the_stages_disagree_on():
    # two versions; the static vectors put the last example of "a" nearer "b"'s
    full = [[[1.0, 0.0], [0.99, 0.14], [0.95, 0.31]], [[0.0, 1.0], [0.14, 0.99], [0.31, 0.95]]]
    static = [[[1.0, 0.0], [0.99, 0.14], [0.6, 0.8]], [[0.0, 1.0], [0.14, 0.99], [0.31, 0.95]]]
    threshold, margin = calibrate_fast(static, full)
    assert margin > 0.05  # the misled example led by this much, so leads up to it fall through
    assert threshold == calibrate(static, 0.25)
    assert calibrate_fast(full, full)[1] == 0.0  # stages that always agree: no margin
