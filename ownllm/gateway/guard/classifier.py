"""Optional safety classifier: a local sequence-classification model a user provides.

None ships and nothing is downloaded: set `guard.classifier_path` to a Hugging
Face model directory (config.json with `id2label`, weights, tokenizer) and
write rules with `detector = "classifier"`, the unsafe `labels` and a
`threshold`. Without a path, rule-based detection is the whole guard, and a
policy that uses classifier rules refuses to load (so a missing model is
noticed at start, not silently skipped).

A classifier is any object with `scores(text) -> {label: probability}`; tests
and embedding code pass their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Classifier(Protocol):
    def scores(self, text: str) -> dict[str, float]: ...


class TransformersClassifier:
    """A local `AutoModelForSequenceClassification` directory, run on CPU in float32."""

    def __init__(self, path: str | Path, max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"classifier path {str(path)!r} has no config.json")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, torch_dtype=torch.float32
        ).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length

    def scores(self, text: str) -> dict[str, float]:
        torch = self._torch
        batch = self.tokenizer(
            text, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.no_grad():
            logits = self.model(**batch).logits[0]  # [num_labels]
        probs = torch.softmax(logits.float(), dim=-1).tolist()
        labels = self.model.config.id2label
        return {str(labels[i]): p for i, p in enumerate(probs)}


def load_classifier(path: str) -> Classifier:
    """Load the classifier at `path`; raises ValueError with a one-line reason."""
    try:
        return TransformersClassifier(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the guard classifier at {path!r}: {e}") from None


def classifier_hits(
    classifier: Classifier, text: str, labels: tuple[str, ...], threshold: float
) -> int:
    """How many of the unsafe `labels` score at or above `threshold` for `text`."""
    scores = classifier.scores(text)
    return sum(1 for label in labels if scores.get(label, 0.0) >= threshold)
