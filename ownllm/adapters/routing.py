"""An alias that routes: each request goes to the version whose training data is nearest.

A router alias holds several versions (adapters). For each, a small index of its training
prompts' embeddings (the shipped MiniLM, unit vectors: up to INDEX_SIZE of them, spread
over its dataset files) is built once, from the dataset files its lineage names, when the
router is made. A request's prompt is embedded and sent to the version whose index is
nearest: the mean cosine of its K nearest examples (per-example nearest neighbours, not
one centroid: a domain is several clusters, and a centroid of them is near none); or to
the base model when no version reaches the router's `threshold`. Without a threshold from
the client it is calibrated from the training data alone (`calibrate`): the CALIBRATION_
QUANTILE of each training prompt's leave-one-out score against its own version, so that
nine in ten prompts like the training ones route to an adapter.

Two stages: a full MiniLM forward costs ~15 ms of CPU a request, so each example is also
indexed by its static vector (`ownllm.models.static_embedding`: token vectors distilled
from MiniLM, a mean, microseconds), and a request is scored on those first. When the best
version is clear — its static score at or over the static threshold, and ahead of the
runner-up's by more than `fast_margin` — it answers at once; otherwise the full forward
decides as before. Both are calibrated on the training data too (`calibrate_fast`).
A router made before the static index (an old row) runs the full stage alone.

Here: the router's shape, checks and the picks (pure: the embeddings are passed in).
Reading the datasets and loading the models are the caller's (`ownllm.api.routes.aliases`,
`ownllm.api.calls`).
Left out: rebuilding the index when a version's data (or the embedding model) changes
(make the router again); a fast "to the base model" decision (below the threshold the
full stage decides).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ownllm.errors import InvalidRequestError, reject_unknown_fields

MAX_VERSIONS = 16
ROUTE_CHARS = 2000  # of the prompt embedded: its start says what it is about
INDEX_SIZE = 128  # training prompts' embeddings kept per version (spread over its data)
K = 3  # nearest examples whose mean similarity scores a version
CALIBRATION_QUANTILE = 0.10
FAST_QUANTILE = 0.25  # of the static scores: the static stage's threshold


@dataclass(frozen=True)
class RoutedVersion:
    adapter_id: str
    name: str
    index: tuple[tuple[float, ...], ...]  # unit vectors of its training prompts
    num_examples: int
    static_index: tuple[tuple[float, ...], ...] = ()  # the same prompts' static vectors


@dataclass(frozen=True)
class Router:
    versions: tuple[RoutedVersion, ...]
    threshold: float  # score below which the base model answers
    is_calibrated: bool = False  # the threshold was calibrated, not given
    static_threshold: float | None = None  # the static stage's; None: no static stage
    fast_margin: float = math.inf  # how far ahead a static pick must be to answer at once

    def __post_init__(self) -> None:
        # all versions' examples in one matrix, each version's rows a slice of it
        rows = [e for v in self.versions for e in v.index]
        object.__setattr__(self, "_matrix", np.asarray(rows, dtype=np.float32))
        static_rows = [e for v in self.versions for e in v.static_index]
        object.__setattr__(self, "_static_matrix", np.asarray(static_rows, dtype=np.float32))
        bounds, start = [], 0
        for v in self.versions:
            bounds.append((start, start + len(v.index)))
            start += len(v.index)
        object.__setattr__(self, "_bounds", tuple(bounds))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Router:
        versions = []
        for v in raw["versions"]:
            # a row from before the index holds its centroid alone: a one-example index
            index = v.get("index") or [v["centroid"]]
            versions.append(
                RoutedVersion(v["adapter_id"], v["name"], tuple(map(tuple, index)),
                              v["num_examples"], tuple(map(tuple, v.get("static_index", ()))))
            )  # fmt: skip
        fast = raw.get("fast")  # a row from before the static stage has none
        return cls(
            tuple(versions),
            float(raw["threshold"]),
            bool(raw.get("calibrated")),
            float(fast["threshold"]) if fast else None,
            float(fast["margin"]) if fast else math.inf,
        )

    @property
    def has_fast_stage(self) -> bool:
        return (
            self.static_threshold is not None
            and math.isfinite(self.fast_margin)
            and all(len(v.static_index) == len(v.index) for v in self.versions)
        )

    def to_dict(self) -> dict[str, Any]:
        """As the alias row stores it (indexes included, 5 decimals)."""
        raw: dict[str, Any] = {
            "threshold": self.threshold,
            "calibrated": self.is_calibrated,
            "versions": [
                {"adapter_id": v.adapter_id, "name": v.name, "num_examples": v.num_examples,
                 "index": [[round(x, 5) for x in e] for e in v.index]}
                | ({"static_index": [[round(x, 5) for x in e] for e in v.static_index]}
                   if v.static_index else {})
                for v in self.versions
            ],
        }  # fmt: skip
        if self.has_fast_stage:
            raw["fast"] = {"threshold": self.static_threshold, "margin": self.fast_margin}
        return raw

    def to_wire(self) -> dict[str, Any]:
        """What a client sees of it (no indexes)."""
        return {
            "threshold": round(self.threshold, 4),
            "threshold_calibrated": self.is_calibrated,
            "versions": [
                {"adapter_id": v.adapter_id, "name": v.name, "num_examples": v.num_examples}
                for v in self.versions
            ],
        }

    def scores(self, vector: list[float], static: bool = False) -> list[float]:
        """Each version's score for `vector` (a unit vector): the mean cosine of its K
        nearest training examples (by their static vectors when `static`)."""
        matrix = self._static_matrix if static else self._matrix
        sims = matrix @ np.asarray(vector, dtype=np.float32)
        return [_top_k_mean(sims[a:b]) for a, b in self._bounds]

    def pick(self, vector: list[float]) -> tuple[RoutedVersion | None, float]:
        """The version nearest `vector` and its score; None (the base model) when the
        best is below the threshold."""
        scores = self.scores(vector)
        best = max(range(len(scores)), key=scores.__getitem__, default=None)
        if best is None:
            return None, -math.inf
        if scores[best] < self.threshold:
            return None, scores[best]
        return self.versions[best], scores[best]

    def pick_fast(self, static_vector: list[float] | None) -> tuple[RoutedVersion, float] | None:
        """The version a static vector picks and its static score when the pick is clear:
        at or over the static threshold, and ahead of the runner-up by more than
        `fast_margin`; else None (the full stage decides)."""
        if not self.has_fast_stage or static_vector is None:
            return None
        scores = self.scores(static_vector, static=True)
        best = int(np.argmax(scores))
        if scores[best] < self.static_threshold or _lead(scores, best) <= self.fast_margin:
            return None  # near the base model's threshold, or as close a call as a miss
        return self.versions[best], scores[best]

    def route(
        self,
        text: str,
        static_vector: Callable[[str], list[float] | None] | None,
        full_vector: Callable[[str], list[float]],
    ) -> tuple[RoutedVersion | None, float, str]:
        """(the version for `text` or None: the base model, its score, the stage that
        decided: "static" or "full"). `static_vector` None: no static stage here."""
        if static_vector is not None and self.has_fast_stage:
            fast = self.pick_fast(static_vector(text))
            if fast is not None:
                return fast[0], fast[1], "static"
        version, score = self.pick(full_vector(text))
        return version, score, "full"


def _top_k_mean(sims: np.ndarray) -> float:
    if len(sims) > K:
        sims = np.partition(sims, len(sims) - K)[-K:]
    return float(sims.mean())


def calibrate(indexes: list[list[list[float]]], quantile: float = CALIBRATION_QUANTILE) -> float:
    """A threshold from the training data alone: each example's leave-one-out score
    against its own version's index, and their `quantile`."""
    loo = []
    for index in indexes:
        m = np.asarray(index, dtype=np.float32)
        if len(m) < 2:
            continue
        sims = m @ m.T
        np.fill_diagonal(sims, -np.inf)
        loo += [_top_k_mean(row[np.isfinite(row)]) for row in sims]
    if not loo:
        return 0.0
    return float(np.quantile(np.asarray(loo), quantile))


def _lead(scores: list[float], best: int) -> float:
    """How far the best score stands over the runner-up's (inf with no runner-up)."""
    return scores[best] - max((s for i, s in enumerate(scores) if i != best), default=-math.inf)


def _loo_scores(indexes: list[np.ndarray]) -> list[list[float]]:
    """Every version's score for each example, leaving it out of its own version."""
    out = []
    for own, index in enumerate(indexes):
        for i, example in enumerate(index):
            row = []
            for v, other in enumerate(indexes):
                sims = np.delete(other @ example, i) if v == own else other @ example
                row.append(_top_k_mean(sims) if len(sims) else -math.inf)
            out.append(row)
    return out


def calibrate_fast(
    static_indexes: list[list[list[float]]], full_indexes: list[list[list[float]]]
) -> tuple[float, float]:
    """(the static threshold, the fast margin) from the training data alone (the same
    examples in both, in order). The threshold: `calibrate` on the static vectors at
    FAST_QUANTILE, so the static stage answers for prompts as near a version as three in
    four of its training prompts, and leaves those nearer the base model's threshold to the
    full stage. The margin: the largest lead of a training prompt's leave-one-out static
    pick whose full pick is another version; 0 when they always agree."""
    statics = [np.asarray(i, dtype=np.float32).reshape(len(i), -1) for i in static_indexes]
    fulls = [np.asarray(i, dtype=np.float32).reshape(len(i), -1) for i in full_indexes]
    margin = 0.0
    for s, f in zip(_loo_scores(statics), _loo_scores(fulls), strict=True):
        best = int(np.argmax(s))
        if best != int(np.argmax(f)):
            margin = max(margin, _lead(s, best))
    return calibrate(static_indexes, FAST_QUANTILE), margin


def spread(texts: list[str], size: int = INDEX_SIZE) -> list[str]:
    """At most `size` of `texts`' distinct ones, evenly spaced (not only the first
    file's). Distinct: a repeated example would be its own nearest neighbour, and the
    calibration would read 1.0 off it."""
    texts = list(dict.fromkeys(texts))
    if len(texts) <= size:
        return list(texts)
    step = len(texts) / size
    return [texts[int(i * step)] for i in range(size)]


def check_router(raw: Any, param: str = "router") -> tuple[list[str], float | None]:
    """(the version refs, the threshold or None: calibrate it) of a router a client sent;
    a 400 naming the field."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be an object {{versions, threshold}}", param=param)
    reject_unknown_fields(raw, ("versions", "threshold"), param)
    versions = raw.get("versions")
    if (
        not isinstance(versions, list)
        or not 1 <= len(versions) <= MAX_VERSIONS
        or not all(isinstance(v, str) and v for v in versions)
    ):
        raise InvalidRequestError(
            f"{param}.versions must be a list of 1 to {MAX_VERSIONS} adapter names or ids",
            param=f"{param}.versions",
        )
    if len(set(versions)) != len(versions):
        raise InvalidRequestError(
            f"{param}.versions names an adapter twice", param=f"{param}.versions"
        )
    threshold = raw.get("threshold")
    if threshold is None:
        return versions, None
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not -1 <= threshold <= 1
    ):
        raise InvalidRequestError(
            f"{param}.threshold must be a cosine similarity from -1 to 1",
            param=f"{param}.threshold",
        )
    return versions, float(threshold)


def route_text(messages: list[dict[str, Any]] | None, prompts: list[str] | None) -> str:
    """What a request is about: its last user message (chat) or its first prompt."""
    for m in reversed(messages or ()):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"][:ROUTE_CHARS]
    first = (prompts or [""])[0]
    return first[:ROUTE_CHARS] if isinstance(first, str) else ""  # token ids: nothing to read
