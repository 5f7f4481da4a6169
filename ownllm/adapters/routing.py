"""An alias that routes: each request goes to the version whose training data is nearest.

A router alias holds several versions (adapters). For each, the centroid of its training
prompts' embeddings (the shipped MiniLM, unit vectors, their mean normalised again) is
computed once, from the dataset files its lineage names, when the router is made; a
request's prompt is embedded and sent to the version of the most similar centroid (cosine),
or to the base model when no centroid reaches the router's `threshold`.

Here: the router's shape, checks and the pick (pure, no model). Reading the datasets and
embedding are the caller's (`ownllm.api.routes.aliases`, `ownllm.api.calls`).
Left out: re-centring when a version's data changes (make the router again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ownllm.errors import InvalidRequestError

MAX_VERSIONS = 16
ROUTE_CHARS = 2000  # of the prompt embedded: its start says what it is about


@dataclass(frozen=True)
class RoutedVersion:
    adapter_id: str
    name: str
    centroid: tuple[float, ...]  # unit length
    num_examples: int


@dataclass(frozen=True)
class Router:
    versions: tuple[RoutedVersion, ...]
    threshold: float  # cosine similarity below which the base model answers

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Router:
        return cls(
            tuple(
                RoutedVersion(v["adapter_id"], v["name"], tuple(v["centroid"]), v["num_examples"])
                for v in raw["versions"]
            ),
            float(raw["threshold"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """As the alias row stores it (centroids included)."""
        return {
            "threshold": self.threshold,
            "versions": [
                {"adapter_id": v.adapter_id, "name": v.name, "centroid": list(v.centroid),
                 "num_examples": v.num_examples}
                for v in self.versions
            ],
        }  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        """What a client sees of it (no centroids)."""
        return {
            "threshold": self.threshold,
            "versions": [
                {"adapter_id": v.adapter_id, "name": v.name, "num_examples": v.num_examples}
                for v in self.versions
            ],
        }

    def pick(self, vector: list[float]) -> tuple[RoutedVersion | None, float]:
        """The version nearest `vector` (a unit vector) and its similarity; None (the
        base model) when the best is below the threshold."""
        best, best_sim = None, -math.inf
        for version in self.versions:
            sim = sum(a * b for a, b in zip(version.centroid, vector))
            if sim > best_sim:
                best, best_sim = version, sim
        if best is None or best_sim < self.threshold:
            return None, best_sim
        return best, best_sim


def check_router(raw: Any, param: str = "router") -> tuple[list[str], float]:
    """(the version refs, the threshold) of a router a client sent; a 400 naming the field."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be an object {{versions, threshold}}", param=param)
    unknown = sorted(set(raw) - {"versions", "threshold"})
    if unknown:
        raise InvalidRequestError(
            f"unknown field {unknown[0]!r} in {param} (known: versions, threshold)",
            param=f"{param}.{unknown[0]}",
        )
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
    threshold = raw.get("threshold", 0.3)
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


def centroid(vectors: list[list[float]]) -> tuple[float, ...]:
    """The normalised mean of unit vectors."""
    dims = len(vectors[0])
    mean = [sum(v[i] for v in vectors) / len(vectors) for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in mean)) or 1.0
    return tuple(x / norm for x in mean)


def route_text(messages: list[dict[str, Any]] | None, prompts: list[str] | None) -> str:
    """What a request is about: its last user message (chat) or its first prompt."""
    for m in reversed(messages or ()):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"][:ROUTE_CHARS]
    first = (prompts or [""])[0]
    return first[:ROUTE_CHARS] if isinstance(first, str) else ""  # token ids: nothing to read
