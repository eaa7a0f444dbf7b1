"""The torch loss reference against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_elo.loss.reference import (
    PolicyLossConfig,
    aggregate,
    broadcast_to_tokens,
    clipped_surrogate,
    group_advantages,
    kl_penalty,
    linear_logprobs_and_entropy,
    policy_loss,
    token_logprobs_and_entropy,
)

SQRT3 = math.sqrt(3)


def test_group_advantages_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 9.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    adv = group_advantages(rewards, valid, std_normalize=True, eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt(1/3) -> +-0.5*sqrt(3)
    assert torch.allclose(adv[0], torch.tensor([0.5, -0.5, 0.5, -0.5]) * SQRT3)
    # group 1: the invalid 9.0 is ignored; mean 2/3, unbiased var 1/3
    assert torch.allclose(adv[1], torch.tensor([1 / 3, -2 / 3, 1 / 3, 0.0]) * SQRT3)
    # all equal -> 0 (not NaN); a single valid sample -> 0
    assert torch.equal(group_advantages(rewards, valid, std_normalize=True)[2], torch.zeros(4))
    assert torch.equal(adv[3], torch.zeros(4))
    centred = group_advantages(rewards, valid, std_normalize=False)
    assert torch.allclose(centred[0], torch.tensor([0.5, -0.5, 0.5, -0.5]))


def test_group_advantages_shape_errors():
    with pytest.raises(ValueError, match=r"must both be \[P, n\]"):
        group_advantages(torch.zeros(4), torch.ones(4, dtype=torch.bool), std_normalize=True)
    with pytest.raises(ValueError, match=r"must both be \[P, n\]"):
        group_advantages(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), std_normalize=True)


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [0, 1, 1]]))
    assert torch.equal(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]))


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, 0.0]))
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1) + 1 - 1, 0.0]))
    with pytest.raises(ValueError, match="kl estimator"):
        kl_penalty(logp, ref, "k2")


def test_clipped_surrogate_all_four_cases():
    logp = torch.tensor([0.5, 0.5, -0.5, -0.5])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.28)
    up, down = math.exp(0.5), math.exp(-0.5)
    assert torch.allclose(loss, torch.tensor([-1.28, up, -down, 0.8]))
    assert clipped.tolist() == [True, False, False, True]


def test_aggregate_modes_and_global_normalizer():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    # Micro-batches with the global normalizer sum to the whole batch's loss.
    for mode, count in (("token_mean", 4), ("seq_mean", 2)):
        split = sum(aggregate(values[i : i + 1], mask[i : i + 1], mode, normalizer=count) for i in range(2))
        assert split.item() == pytest.approx(aggregate(values, mask, mode).item())
    assert aggregate(values, torch.zeros_like(mask), "token_mean").item() == 0.0
    with pytest.raises(ValueError, match="loss aggregation"):
        aggregate(values, mask, "sum")


def test_token_logprobs_and_entropy_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([0, 1]))
    assert torch.allclose(logp, torch.tensor([math.log(0.5), math.log(0.25)]))
    assert torch.allclose(ent, torch.tensor([math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]))
    hidden, weight = torch.randn(5, 4), torch.randn(7, 4)
    tokens = torch.randint(0, 7, (5,))
    a, b = linear_logprobs_and_entropy(hidden, weight, tokens)
    c, d = token_logprobs_and_entropy(hidden @ weight.T, tokens)
    assert torch.equal(a, c) and torch.equal(b, d)


def test_policy_loss_value_gradient_and_stats():
    logp = torch.tensor([[0.5, -0.5, 0.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    ref = torch.tensor([[0.0, -0.5, 0.0]])
    entropy = torch.tensor([[2.0, 1.0, 5.0]])
    config = PolicyLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)
    loss, stats = policy_loss(logp, old, adv, mask, config=config, ref_logprobs=ref, entropy=entropy)
    k3_first = math.exp(-0.5) + 0.5 - 1
    expected = ((-1.28 + 0.1 * k3_first - 0.01 * 2.0) + (-math.exp(-0.5) + 0.0 - 0.01 * 1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # token 0 is clipped (no PG gradient), only the k3 term: d/dlogp [exp(ref-logp) - (ref-logp)] = -exp(ref-logp) + 1
    # token 1: d/dlogp(-exp(logp)) = -exp(-0.5); k3 gradient 0 at logp == ref; masked token 2: 0.
    assert torch.allclose(logp.grad, torch.tensor([[0.1 * (1 - math.exp(-0.5)) / 2, -math.exp(-0.5) / 2, 0.0]]))
    assert stats.clip_fraction == pytest.approx(0.5)
    assert stats.entropy == pytest.approx(1.5)
    assert stats.kl == pytest.approx(k3_first / 2)


def test_policy_loss_refuses_missing_inputs():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        policy_loss(x, x, x, x, config=PolicyLossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        policy_loss(x, x, x, x, config=PolicyLossConfig(entropy_coef=0.1))


def test_first_step_is_on_policy():
    """With logp == old_logp and ref == logp, ratio is 1, nothing is clipped, and KL is exactly 0."""
    logp = torch.randn(3, 5)
    _, stats = policy_loss(logp, logp.clone(), torch.randn(3, 5), torch.ones(3, 5),
                           config=PolicyLossConfig(kl_coef=0.1), ref_logprobs=logp.clone())
    assert stats.kl == 0.0 and stats.clip_fraction == 0.0 and stats.ratio_mean == 1.0
