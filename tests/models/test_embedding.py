"""The shipped all-MiniLM-L6-v2 loaded with transformers: sentence-transformers' vectors."""

from __future__ import annotations

import json

import pytest

from ownllm.models.catalog import ModelLoadError
from ownllm.models.embedding import EmbeddingModel, is_embedding_model, shipped_model_dir


def test_model_names():
    assert is_embedding_model("all-minilm-l6-v2")
    assert is_embedding_model("sentence-transformers/all-MiniLM-L6-v2")
    assert not is_embedding_model("text-embedding-3-small")


def test_a_directory_without_tokenizer_fails_clearly(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="incomplete: no tokenizer.json"):
        EmbeddingModel.load(tmp_path)


@pytest.mark.slow
def test_related_sentences_are_closer_and_vectors_are_unit_length(tmp_path):
    model = EmbeddingModel.load()
    a, b, c = model.embed(
        [
            "A man is playing a guitar.",
            "Someone is playing an instrument.",
            "Stock markets fell sharply on Monday.",
        ]
    )

    def dot(x, y):
        return sum(p * q for p, q in zip(x, y))

    assert model.dimensions == len(a) == 384
    assert dot(a, a) == pytest.approx(1.0, abs=1e-5)
    assert dot(a, b) > dot(a, c) + 0.3
    # padding in a batch does not change a vector (mean over the attention mask)
    (alone,) = model.embed(["A man is playing a guitar."])
    assert alone == pytest.approx(a, abs=1e-5)
    assert model.count_tokens(["hello world"]) == [4]  # [CLS] hello world [SEP]


def test_shipped_dir_has_the_tokenizer():
    directory = shipped_model_dir()
    assert (directory / "tokenizer.json").is_file()
