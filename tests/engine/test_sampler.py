"""The sampler: greedy, filters, penalties, seeds, logprobs and constraint bitmasks."""

from __future__ import annotations

import pytest
import torch

from ownllm.backends.base import SamplingParams
from ownllm.engine.sampler import (
    SamplingBatch,
    allocate_bitmask,
    fill_bitmask,
    new_generator,
    sample,
)

VOCAB = 64


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Unseeded rows draw from torch's global RNG: seeded here, the statistical tests below
    see the same draws on every run and machine instead of failing one run in thousands."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


def run(logits, params, prompts=None, outputs=None, generators=None, bitmask=None):
    rows = len(params)
    batch = SamplingBatch.build(
        params,
        prompts or [[] for _ in range(rows)],
        outputs or [[] for _ in range(rows)],
        generators,
    )
    return sample(logits, batch, bitmask)


def random_logits(rows: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def test_temperature_zero_is_argmax():
    logits = random_logits(8)
    out = run(logits, [SamplingParams(temperature=0.0)] * 8)
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None


def test_logits_are_not_modified():
    logits = random_logits(4)
    before = logits.clone()
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, frequency_penalty=1)
    run(logits, [params] * 4, outputs=[[1, 2]] * 4)
    assert torch.equal(logits, before)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=0.999999)],
    ids=["top_k=1", "top_p tiny", "min_p ~1"],
)
def test_filters_that_keep_one_token_are_greedy(params):
    logits = random_logits(16, seed=1)
    for _ in range(5):
        out = run(logits, [params] * 16)
        assert torch.equal(out.token_ids, logits.argmax(-1))


def test_sampling_follows_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, 4).contiguous()
    out = run(logits, [SamplingParams(temperature=1.0)] * 20000)
    freq = torch.bincount(out.token_ids, minlength=4).float() / 20000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.015)


def test_low_temperature_sharpens_and_high_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(5000, 4).contiguous()
    cold = run(logits, [SamplingParams(temperature=0.25)] * 5000).token_ids
    hot = run(logits, [SamplingParams(temperature=4.0)] * 5000).token_ids
    assert (cold == 0).float().mean() > 0.95
    assert (hot == 3).float().mean() > 0.1


def test_top_k_and_min_p_never_pick_filtered_tokens():
    logits = random_logits(1, seed=2).expand(3000, VOCAB).contiguous()
    top3 = set(logits[0].topk(3).indices.tolist())
    out = run(logits, [SamplingParams(top_k=3, temperature=2.0)] * 3000)
    assert set(out.token_ids.tolist()) == top3

    probs = logits[0].softmax(-1)
    kept = set((probs >= 0.2 * probs.max()).nonzero().flatten().tolist())
    out = run(logits, [SamplingParams(min_p=0.2)] * 3000)
    assert set(out.token_ids.tolist()) <= kept


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(3000, 4).contiguous()
    out = run(logits, [SamplingParams(top_p=0.7)] * 3000)
    assert set(out.token_ids.tolist()) == {0, 1}


def test_mixed_batch_applies_each_rows_own_settings():
    logits = random_logits(1, seed=3).expand(4, VOCAB).contiguous()
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=1),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(temperature=5.0),
    ]
    argmax = int(logits[0].argmax())
    for _ in range(10):
        out = run(logits, params)
        assert out.token_ids[0] == argmax and out.token_ids[1] == argmax


def test_same_seed_gives_same_tokens_whatever_the_batch():
    """A seeded request's tokens do not depend on its batch companions or its row."""
    mine = SamplingParams(temperature=1.0, top_p=0.95, seed=42)
    steps = [random_logits(1, seed=100 + s, scale=1.0) for s in range(12)]

    def generate(companions: int, position: int) -> list[int]:
        gens: list = [None] * (companions + 1)
        gens[position] = new_generator(42)
        for i in range(companions + 1):
            if i != position and i % 2:
                gens[i] = new_generator(1000 + i)  # other seeded requests
        params = [SamplingParams(temperature=0.8, top_k=10, seed=1)] * (companions + 1)
        params[position] = mine
        tokens = []
        for step in steps:
            logits = random_logits(companions + 1, seed=len(tokens) + 7, scale=1.0)
            logits[position] = step[0]
            out = run(logits, params, generators=gens)
            tokens.append(int(out.token_ids[position]))
        return tokens

    alone = generate(0, 0)
    assert generate(3, 2) == alone
    assert generate(6, 5) == alone
    assert len(set(alone)) > 3  # it really sampled


def test_different_seeds_give_different_tokens():
    logits = torch.zeros(1, 1000)

    def tokens(seed):
        gen = new_generator(seed)
        return [
            int(run(logits, [SamplingParams(seed=seed)], generators=[gen]).token_ids)
            for _ in range(5)
        ]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_frequency_and_presence_penalties_count_generated_tokens_only():
    logits = torch.zeros(1, VOCAB)
    params = SamplingParams(
        temperature=0.0, frequency_penalty=0.5, presence_penalty=1.0, logprobs=0
    )
    out = run(logits, [params], prompts=[[7, 7, 7]], outputs=[[3, 3, 5]])
    penalised = torch.zeros(VOCAB)
    penalised[3] = -(2 * 0.5 + 1.0)
    penalised[5] = -(1 * 0.5 + 1.0)
    expected = penalised.log_softmax(-1)
    assert int(out.token_ids) not in (3, 5)
    assert out.logprobs.item() == pytest.approx(expected[int(out.token_ids)].item(), abs=1e-5)


def test_negative_presence_penalty_encourages_repetition():
    logits = torch.zeros(1, VOCAB)
    out = run(logits, [SamplingParams(temperature=0.0, presence_penalty=-1.0)], outputs=[[9]])
    assert int(out.token_ids) == 9


def test_repetition_penalty_covers_prompt_and_output_with_hf_semantics():
    logits = torch.zeros(1, VOCAB)
    logits[0, 1] = 4.0  # seen in prompt, positive: divided by 2 -> 2.0
    logits[0, 2] = 3.0  # unseen: stays 3.0 and becomes the argmax
    logits[0, 3] = -1.0  # seen in output, negative: multiplied by 2 -> -2.0
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, logprobs=3)
    out = run(logits, [params], prompts=[[1]], outputs=[[3]])
    assert int(out.token_ids) == 2
    expected = logits.clone()
    expected[0, 1], expected[0, 3] = 2.0, -2.0
    lp = expected.log_softmax(-1)[0]
    assert out.top_token_ids[0].tolist()[:2] == [2, 1]
    assert out.top_logprobs[0, 1].item() == pytest.approx(lp[1].item(), abs=1e-5)
    logprob_of = dict(zip(out.top_token_ids[0].tolist(), out.top_logprobs[0].tolist()))
    assert 3 not in logprob_of or logprob_of[3] == pytest.approx(lp[3].item())


def test_logprobs_are_the_models_distribution_not_the_sampling_one():
    logits = random_logits(3, seed=4)
    params = [
        SamplingParams(temperature=0.3, top_k=2, logprobs=5),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(temperature=1.0),
    ]
    out = run(logits, params)
    reference = logits.log_softmax(-1)
    chosen = reference.gather(1, out.token_ids.unsqueeze(1)).squeeze(1)
    assert torch.allclose(out.logprobs, chosen)
    assert out.top_token_ids.shape == (3, 5)
    top = reference[0].topk(5)
    assert out.top_token_ids[0].tolist() == top.indices.tolist()
    assert torch.allclose(out.top_logprobs[0], top.values)
    assert (out.top_logprobs[0][:-1] >= out.top_logprobs[0][1:]).all()


def test_logprobs_zero_gives_only_the_chosen_token():
    out = run(random_logits(2), [SamplingParams(temperature=0.0, logprobs=0)] * 2)
    assert out.logprobs.shape == (2,)
    assert out.top_token_ids is None


class AllowOnly:
    """A TokenConstraint that allows a fixed set of tokens."""

    def __init__(self, allowed):
        self.allowed = allowed

    def fill_bitmask(self, bitmask, row):
        bitmask[row].zero_()
        for t in self.allowed:
            bitmask[row, t // 32] |= torch.tensor(1 << (t % 32), dtype=torch.int64).to(torch.int32)

    def accept_token(self, token_id):
        return token_id in self.allowed

    def is_terminated(self):
        return False

    def fork(self):
        return self


def test_bitmask_restricts_constrained_rows_only():
    logits = random_logits(3, seed=5)
    constraints = [AllowOnly({5, 40, 63}), None, AllowOnly({31})]
    bitmask = fill_bitmask(allocate_bitmask(3, VOCAB), constraints)
    for _ in range(20):
        out = run(logits, [SamplingParams(temperature=3.0)] * 3, bitmask=bitmask)
        assert int(out.token_ids[0]) in {5, 40, 63}
        assert int(out.token_ids[2]) == 31
    greedy = run(logits, [SamplingParams(temperature=0.0)] * 3, bitmask=bitmask)
    assert int(greedy.token_ids[1]) == int(logits[1].argmax())


def test_bitmask_allowing_nothing_leaves_the_row_unmasked():
    logits = random_logits(1, seed=6)
    bitmask = allocate_bitmask(1, VOCAB).zero_()
    out = run(logits, [SamplingParams(temperature=0.0)], bitmask=bitmask)
    assert int(out.token_ids) == int(logits.argmax())


def test_top_k_applies_to_its_row_only():
    logits = random_logits(1, seed=7).expand(2000, VOCAB).contiguous()
    params = [SamplingParams(top_k=2, temperature=3.0), SamplingParams(temperature=3.0)] * 1000
    out = run(logits, params).token_ids
    top2 = set(logits[0].topk(2).indices.tolist())
    assert set(out[0::2].tolist()) == top2
    assert len(set(out[1::2].tolist())) > 10


# --- logit_bias ------------------------------------------------------------------------


def test_logit_bias_plus_100_makes_greedy_pick_the_token():
    logits = random_logits(2, seed=8)
    target = int(logits[0].argmin())
    params = [SamplingParams(temperature=0.0, logit_bias=((target, 100.0),))] * 2
    assert run(logits, params).token_ids.tolist() == [target, target]


def test_logit_bias_minus_100_bans_the_token_even_when_sampling_hot():
    logits = torch.zeros(1, VOCAB)
    logits[0, 3] = 30.0  # all but certain without the ban
    params = [SamplingParams(temperature=2.0, logit_bias=((3, -100.0), (4, -100.0)))] * 3000
    out = run(logits.expand(3000, VOCAB).contiguous(), params).token_ids
    assert not set(out.tolist()) & {3, 4}
    greedy = run(logits, [SamplingParams(temperature=0.0, logit_bias=((3, -100.0),))])
    assert int(greedy.token_ids) != 3


def test_a_small_bias_shifts_the_distribution_by_its_value():
    """A bias b multiplies a token's odds by e^b (at temperature 1), as OpenAI defines it."""
    logits = torch.zeros(20000, 4)
    params = [SamplingParams(temperature=1.0, logit_bias=((2, 1.0),))] * 20000
    freq = torch.bincount(run(logits, params).token_ids, minlength=4).float() / 20000
    expected = torch.tensor([0.0, 0.0, 1.0, 0.0]).softmax(-1)
    assert torch.allclose(freq, expected, atol=0.015)


def test_logit_bias_touches_only_its_own_row():
    logits = random_logits(3, seed=9)
    target = int(logits[1].argmin())
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, logit_bias=((target, 100.0),)),
        SamplingParams(temperature=0.0, logit_bias=((int(logits[2].argmax()), -100.0),)),
    ]
    out = run(logits, params, bitmask=None).token_ids.tolist()
    assert out[0] == int(logits[0].argmax())
    assert out[1] == target
    assert out[2] == int(logits[2].topk(2).indices[1])  # the ban gives the runner-up


def test_a_seeded_row_is_the_same_with_or_without_a_biased_neighbour():
    """Rows in the same batch without a bias are unaffected by another row's bias."""
    mine = SamplingParams(temperature=1.0, top_p=0.95, seed=42)

    def generate(neighbour: SamplingParams) -> list[int]:
        gens = [new_generator(42), new_generator(7)]
        tokens = []
        for step in range(16):
            logits = random_logits(2, seed=200 + step, scale=1.0)
            out = run(logits, [mine, neighbour], generators=gens)
            tokens.append(int(out.token_ids[0]))
        return tokens

    plain = generate(SamplingParams(temperature=1.0, seed=7))
    biased = SamplingParams(
        temperature=1.0,
        seed=7,
        logit_bias=tuple((t, 100.0 if t % 2 else -100.0) for t in range(VOCAB)),
    )
    assert generate(biased) == plain
    assert len(set(plain)) > 3  # it really sampled


def test_logprobs_reflect_the_bias():
    logits = torch.zeros(1, 4)
    params = [SamplingParams(temperature=0.0, logprobs=4, logit_bias=((1, 2.0), (3, -100.0)))]
    out = run(logits, params)
    assert int(out.token_ids) == 1
    expected = torch.tensor([0.0, 2.0, 0.0, float("-inf")]).log_softmax(-1)
    assert out.logprobs[0] == pytest.approx(float(expected[1]))
    top = out.top_token_ids[0].tolist()
    assert top[0] == 1 and set(top[1:3]) == {0, 2} and top[3] == 3
    assert out.top_logprobs[0, 3] == float("-inf")


def test_logit_bias_works_with_a_constraint():
    logits = random_logits(2, seed=10)
    constraints = [AllowOnly({5, 40, 63}), AllowOnly({5, 40, 63})]
    bitmask = fill_bitmask(allocate_bitmask(2, VOCAB), constraints)
    outside = next(t for t in range(VOCAB) if t not in {5, 40, 63})
    params = [
        SamplingParams(temperature=0.0, logit_bias=((outside, 100.0), (63, 50.0))),
        SamplingParams(temperature=2.0, logit_bias=((5, -100.0), (63, -100.0))),
    ]
    for _ in range(20):
        out = run(logits, params, bitmask=bitmask).token_ids.tolist()
        # the constraint still rules: a biased token it does not allow is never picked
        assert out == [63, 40]


def test_a_ban_of_everything_the_constraint_allows_yields_to_the_constraint():
    logits = random_logits(2, seed=11)
    bitmask = fill_bitmask(allocate_bitmask(2, VOCAB), [AllowOnly({5, 40}), None])
    params = [
        SamplingParams(temperature=0.0, logit_bias=((5, -100.0), (40, -100.0))),
        SamplingParams(temperature=1.0, logit_bias=tuple((t, -100.0) for t in range(VOCAB))),
    ]
    out = run(logits, params, bitmask=bitmask).token_ids.tolist()
    assert out[0] == (5 if logits[0, 5] > logits[0, 40] else 40)
    assert 0 <= out[1] < VOCAB  # banning every token bans none, rather than fail


def test_logit_bias_past_the_vocabulary_is_ignored():
    logits = random_logits(1, seed=12)
    params = [SamplingParams(temperature=0.0, logit_bias=((VOCAB + 5, 100.0), (VOCAB, -100.0)))]
    assert int(run(logits, params).token_ids) == int(logits.argmax())
