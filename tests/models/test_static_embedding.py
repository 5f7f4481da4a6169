"""Static token vectors distilled from a MiniLM-shaped model: cached on disk once, read back
by a later process (not distilled again), unit vectors, nothing for a text with no tokens.
A tiny random BERT with the shipped tokenizer stands in for MiniLM (a second to distil)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ownllm.models.embedding import EmbeddingModel, LazyEmbeddingModel, shipped_model_dir
from ownllm.models.static_embedding import StaticEmbedding


@pytest.fixture(scope="module")
def tiny_minilm_dir(tmp_path_factory):
    """A random 1-layer, 32-wide BertModel with the shipped tokenizer (all its vocabulary)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-minilm")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    shipped = shipped_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(shipped / name, directory / name)
    return directory


def test_the_table_is_distilled_once_and_read_back_from_disk(tiny_minilm_dir, tmp_path):
    cache = tmp_path / "models"
    model = EmbeddingModel.load(tiny_minilm_dir)
    lazy = LazyEmbeddingModel(model, static_dir=cache)
    assert lazy.static() is None and lazy.static() is None  # not cached yet: not distilled
    before = StaticEmbedding.num_distilled

    first = lazy.static(distill=True)  # the first router made distils it
    assert StaticEmbedding.num_distilled == before + 1 and lazy.static() is first
    (cached,) = cache.glob("static-*.npy")  # one table, no temporary file left beside it
    assert np.load(cached).shape == (30522, 32)
    stamp = cached.stat().st_mtime_ns

    # a later process: reads the file, distils nothing, writes nothing
    again = LazyEmbeddingModel(model, static_dir=cache).static(distill=True)
    assert StaticEmbedding.num_distilled == before + 1
    assert cached.stat().st_mtime_ns == stamp
    assert list(cache.iterdir()) == [cached]
    texts = ["How do I bake bread?", "refund my invoice"]
    assert np.allclose(again.embed(texts), first.embed(texts), atol=1e-6)


def test_vectors_are_unit_length_and_a_text_without_tokens_has_none(tiny_minilm_dir, tmp_path):
    model = EmbeddingModel.load(tiny_minilm_dir)
    static = LazyEmbeddingModel(model, static_dir=tmp_path).static(distill=True)
    bread, refund, empty = static.embed(["How do I bake bread?", "refund my invoice", ""])
    assert len(bread) == 32 and np.linalg.norm(bread) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(bread, refund)
    assert empty is None
    # a token's vector is the model's for that token alone, whatever surrounds it
    (alone,) = static.embed(["bread"])
    (twice,) = static.embed(["bread bread"])
    assert np.allclose(alone, twice, atol=1e-6)


def test_no_cache_dir_or_a_stand_in_model_has_no_static_vectors(tiny_minilm_dir, tmp_path):
    model = EmbeddingModel.load(tiny_minilm_dir)
    assert LazyEmbeddingModel(model).static(distill=True) is None

    class StandIn:
        def embed(self, texts):
            return [[1.0, 0.0] for _ in texts]

    assert LazyEmbeddingModel(StandIn(), static_dir=tmp_path).static(distill=True) is None
