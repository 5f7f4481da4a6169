"""Composition: cat is the exact sum of the deltas; the others match PEFT's add_weighted_adapter."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import func, select

from ownllm.adapters.compose import ComposeSpec, compose
from ownllm.adapters.operations import compose_adapters
from ownllm.adapters.registry import register_adapter
from ownllm.errors import InvalidRequestError, NotFoundError
from ownllm.formats.peft import read_adapter
from ownllm.gateway.principal import Principal
from ownllm.store.schema import Adapter
from tests.adapters.conftest import ALL, files_under, make_peft_adapter

ALICE = Principal(tenant_id="alice")
WEIGHTS = (0.7, -0.4)


def test_cat_equals_the_weighted_sum_of_deltas(adapter_a, adapter_b):
    a, b = read_adapter(adapter_a), read_adapter(adapter_b)  # ranks 4 and 8, different targets
    cat = compose([a, b], ComposeSpec("cat", WEIGHTS))
    assert cat.rank == 12 and cat.config["lora_alpha"] == 12
    assert set(cat.modules) == set(a.modules) | set(b.modules)
    for module in cat.modules:
        expected = sum(w * x.delta(module) for w, x in zip(WEIGHTS, (a, b)) if module in x.modules)
        torch.testing.assert_close(cat.delta(module), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def equal_rank(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("equal-rank")
    return (
        make_peft_adapter(tiny_model_dir, root / "x", targets=ALL, seed=3),
        make_peft_adapter(tiny_model_dir, root / "y", alpha=16.0, targets=ALL, seed=4),
    )


@pytest.mark.parametrize(
    ("method", "density"), [("cat", None), ("linear", None), ("ties", 0.5), ("ties", 1.0)]
)
def test_matches_peft_add_weighted_adapter(tiny_model_dir, equal_rank, method, density):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    x, y = equal_rank
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, x, adapter_name="x")
    peft_model.load_adapter(y, adapter_name="y")
    peft_model.add_weighted_adapter(
        ["x", "y"], list(WEIGHTS), "mix", combination_type=method, density=density
    )
    state = peft_model.state_dict()
    ours = compose([read_adapter(x), read_adapter(y)], ComposeSpec(method, WEIGHTS, density))
    assert ours.config["r"] == peft_model.peft_config["mix"].r
    for module, (a, b) in ours.modules.items():
        torch.testing.assert_close(a, state[f"base_model.model.{module}.lora_A.mix.weight"])
        torch.testing.assert_close(b, state[f"base_model.model.{module}.lora_B.mix.weight"])


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_reproducible_by_seed(equal_rank, method):
    x, y = (read_adapter(p) for p in equal_rank)
    one = compose([x, y], ComposeSpec(method, WEIGHTS, density=0.3, seed=7))
    again = compose([x, y], ComposeSpec(method, WEIGHTS, density=0.3, seed=7))
    other = compose([x, y], ComposeSpec(method, WEIGHTS, density=0.3, seed=8))
    module = "model.layers.0.mlp.down_proj"
    assert torch.equal(one.modules[module][0], again.modules[module][0])
    assert not torch.equal(one.modules[module][0], other.modules[module][0])
    # about 70% of each input's entries are dropped, so most merged entries are zero or one input's
    kept = (one.modules[module][0] != 0).float().mean().item()
    assert 0.35 < kept < 0.65  # 1 - 0.7 * 0.7 = 0.51 expected


def test_rank_mismatch_needs_cat(adapter_a, adapter_b):
    a, b = read_adapter(adapter_a), read_adapter(adapter_b)
    for method, density in [("linear", None), ("ties", 0.5), ("dare_ties", 0.5)]:
        with pytest.raises(InvalidRequestError, match="has rank 4, .* has rank 8; use cat"):
            compose([a, b], ComposeSpec(method, WEIGHTS, density), names=["a", "b"])
    with pytest.raises(InvalidRequestError, match="density") as e:
        compose([a, a], ComposeSpec("ties", WEIGHTS))
    assert e.value.param == "density"
    with pytest.raises(InvalidRequestError, match="unknown composition method"):
        compose([a, a], ComposeSpec("svd", WEIGHTS))


def test_registered_composition_has_lineage_and_refuses_unknown(db, data_dir, adapter_a, adapter_b):
    ids = [
        register_adapter(
            db,
            data_dir,
            src,
            name=name,
            tenant_id="alice",
            base_model="tiny",
            base_sha256="b" * 64,
            source="imported",
        ).id
        for name, src in (("a", adapter_a), ("b", adapter_b))
    ]
    mix = compose_adapters(
        db,
        data_dir,
        ALICE,
        name="mix",
        adapters=[("a", 0.7), (ids[1], -0.4)],
        method="cat",
        max_rank=64,
    )
    assert mix.source == "composed" and list(mix.parents) == ids
    assert mix.rank == 12 and mix.hyperparameters == {"method": "cat", "weights": [0.7, -0.4]}
    assert mix.base_sha256 == "b" * 64
    before = files_under(data_dir.adapters)
    with pytest.raises(NotFoundError, match="no adapter 'nope'") as e:
        compose_adapters(
            db,
            data_dir,
            ALICE,
            name="bad",
            adapters=[("a", 1), ("nope", 1)],
            method="cat",
            max_rank=64,
        )
    assert e.value.param == "adapters[1].id"
    with pytest.raises(NotFoundError):  # another tenant's adapter is as unknown
        compose_adapters(
            db,
            data_dir,
            Principal("bob"),
            name="bad",
            adapters=[("a", 1)],
            method="cat",
            max_rank=64,
        )
    with pytest.raises(InvalidRequestError, match="rank"):
        compose_adapters(
            db,
            data_dir,
            ALICE,
            name="bad",
            adapters=[("a", 1), ("b", 1)],
            method="linear",
            max_rank=64,
        )
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Adapter)) == 3
    assert files_under(data_dir.adapters) == before and files_under(data_dir.tmp) == []
