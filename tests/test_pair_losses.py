"""The preference-pair losses: hand-computed values, TRL's implementations on identical log-probs, and
the trainer's wrapper (rows in pairs, references, normaliser, statistics)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from megatron_elo.loss import pairs
from megatron_elo.loss.preference import PairLossConfig, pair_loss, per_pair_loss
from megatron_elo.trainer.step import TrainBatch

# two pairs of sequence log-probs (nats): policy chosen / rejected, initial reference, iteration start
CHOSEN, REJECTED = torch.tensor([-4.0, -7.5], dtype=torch.float64), torch.tensor([-6.0, -5.0], dtype=torch.float64)
REF_CHOSEN, REF_REJECTED = torch.tensor([-4.5, -7.0], dtype=torch.float64), torch.tensor([-5.5, -5.5], dtype=torch.float64)
START_CHOSEN, START_REJECTED = torch.tensor([-4.2, -7.4], dtype=torch.float64), torch.tensor([-5.8, -5.2], dtype=torch.float64)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_ipo_sppo_inpo_by_hand():
    # pair 0: Delta = (-4 + 4.5) - (-6 + 5.5) = 1.0; pair 1: (-7.5 + 7) - (-5 + 5.5) = -1.0
    delta = [1.0, -1.0]
    got = pairs.dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1)
    assert got.tolist() == pytest.approx([-_log_sigmoid(0.1 * d) for d in delta])
    eps = 0.2
    cdpo = pairs.dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1, label_smoothing=eps)
    assert cdpo.tolist() == pytest.approx([-(1 - eps) * _log_sigmoid(0.1 * d) - eps * _log_sigmoid(-0.1 * d) for d in delta])
    robust = pairs.dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1, label_smoothing=eps, robust=True)
    assert robust.tolist() == pytest.approx([(-(1 - eps) * _log_sigmoid(0.1 * d) + eps * _log_sigmoid(-0.1 * d)) / 0.6
                                             for d in delta])
    ipo = pairs.ipo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1)
    assert ipo.tolist() == pytest.approx([(1.0 - 5.0) ** 2, (-1.0 - 5.0) ** 2])
    # length-normalised (TRL's): log-ratios 0.5 / 2 tokens and -0.5 / 4 tokens -> 0.25 + 0.125
    ipo_mean = pairs.ipo_loss(CHOSEN[:1], REJECTED[:1], REF_CHOSEN[:1], REF_REJECTED[:1], beta=0.1,
                              chosen_tokens=torch.tensor([2.0], dtype=torch.float64), rejected_tokens=torch.tensor([4.0], dtype=torch.float64))
    assert ipo_mean.item() == pytest.approx((0.25 + 0.125 - 5.0) ** 2)
    # SPPO, beta 0.5 (eta 2): ratios vs start 0.2 / -0.2 (pair 0); hard targets +1 / -1; soft P = 0.75 / 0.25
    hard = pairs.sppo_loss(CHOSEN[:1], REJECTED[:1], START_CHOSEN[:1], START_REJECTED[:1], beta=0.5)
    assert hard.item() == pytest.approx((0.2 - 1.0) ** 2 + (-0.2 + 1.0) ** 2)
    soft = pairs.sppo_loss(CHOSEN[:1], REJECTED[:1], START_CHOSEN[:1], START_REJECTED[:1], beta=0.5,
                           chosen_win=torch.tensor([0.75], dtype=torch.float64), rejected_win=torch.tensor([0.25], dtype=torch.float64))
    assert soft.item() == pytest.approx((0.2 - 0.5) ** 2 + (-0.2 + 0.5) ** 2)
    # INPO eta 0.3, tau 0.1: h = 2 - (1/3)(1) - (2/3)(1.6) = 0.6; target 1 / 0.6
    inpo = pairs.inpo_loss(CHOSEN[:1], REJECTED[:1], REF_CHOSEN[:1], REF_REJECTED[:1], START_CHOSEN[:1],
                           START_REJECTED[:1], eta=0.3, tau=0.1)
    assert inpo.item() == pytest.approx((2.0 - 1 / 3 - (2 / 3) * 1.6 - 1 / 0.6) ** 2)


def test_simpo_and_orpo_by_hand():
    chosen_mean, rejected_mean = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([-1.2], dtype=torch.float64)
    simpo = pairs.simpo_loss(chosen_mean, rejected_mean, beta=2.5, gamma_beta_ratio=0.55)
    assert simpo.item() == pytest.approx(-_log_sigmoid(2.5 * (0.7 - 0.55)))
    # odds = p / (1 - p): log-odds ratio = (-0.5 + 1.2) - (log(1 - e^-0.5) - log(1 - e^-1.2))
    log_odds = 0.7 - (math.log(1 - math.exp(-0.5)) - math.log(1 - math.exp(-1.2)))
    orpo = pairs.orpo_loss(chosen_mean, rejected_mean, lam=0.1)
    assert orpo.item() == pytest.approx(0.5 - 0.1 * _log_sigmoid(log_odds))
    tiny = torch.tensor([-1e-7, -30.0])  # log1mexp at both ends: no inf / nan
    assert torch.allclose(pairs.log1mexp(tiny), torch.tensor([math.log(1e-7), -math.exp(-30.0)]), rtol=1e-4)


# ---------------------------------------------------------------- TRL on identical log-probs

def _trl_dpo_loss(loss_type: str, *, beta: float, label_smoothing: float = 0.0):
    """TRL DPOTrainer._compute_loss on per-token log-probs we hand it (a stand-in model returns them)."""
    from trl import DPOTrainer

    gen = torch.Generator().manual_seed(3)
    pairs_, seq = 3, 6
    mask = torch.zeros(2 * pairs_, seq + 1, dtype=torch.long)
    for row, (start, end) in enumerate([(2, 7), (3, 6), (2, 5), (4, 7), (2, 6), (3, 7)]):
        mask[row, start:end] = 1
    token_logps = -torch.rand(2 * pairs_, seq, generator=gen) * 2 * mask[:, 1:]
    ref = token_logps.sum(1) + 0.3 * torch.randn(2 * pairs_, generator=gen)
    outputs = SimpleNamespace(log_probs=token_logps, entropy=torch.zeros(2 * pairs_, seq),
                              mean_logits=torch.zeros(2 * pairs_, seq), is_top1=torch.zeros(2 * pairs_, seq, dtype=torch.bool))
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False,
                              ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                              loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                              use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                              _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * pairs_, seq + 1, dtype=torch.long), "attention_mask": torch.ones_like(mask),
              "completion_mask": mask, "ref_chosen_logps": ref[:pairs_], "ref_rejected_logps": ref[pairs_:]}
    trl_loss = DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, return_outputs=False)
    # ours: rows interleaved (chosen, rejected), token log-probs aligned with the tokens they score
    order = [i for p in range(pairs_) for i in (p, pairs_ + p)]
    ours_logps = torch.cat([torch.zeros(2 * pairs_, 1), token_logps], dim=1)[order]
    ours_mask = mask.bool()[order]
    micro = TrainBatch(tokens=torch.zeros(2 * pairs_, seq + 1, dtype=torch.long), response_mask=ours_mask,
                       advantages=torch.zeros(2 * pairs_), old_logprobs=None, ref_sequence_logprobs=ref[order])
    return trl_loss, ours_logps, micro, pairs_, trainer


@pytest.mark.parametrize("trl_type, config", [
    ("sigmoid", PairLossConfig(loss="dpo", beta=0.1)),
    ("robust", PairLossConfig(loss="dpo", beta=0.2, label_smoothing=0.1, robust=True)),
    ("ipo", PairLossConfig(loss="ipo", beta=0.1, ipo_length_normalize=True)),
    ("sppo_hard", PairLossConfig(loss="sppo", beta=0.5)),
], ids=["dpo", "robust", "ipo-length-normalised", "sppo_hard"])
def test_pair_losses_equal_trl_dpo_trainer(trl_type, config):
    pytest.importorskip("trl")
    trl_loss, logps, micro, count, trl = _trl_dpo_loss(trl_type, beta=config.beta, label_smoothing=config.label_smoothing)
    if config.loss == "sppo":  # SPPO measures against the iteration's start: hand TRL's reference in that slot
        micro = TrainBatch(**{**vars(micro), "start_sequence_logprobs": micro.ref_sequence_logprobs})
    ours, stats = pair_loss(logps, micro, entropy=None, config=config, normalizer=count)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-6)
    if config.loss == "dpo":  # the logged implicit rewards too
        assert stats["rewards/chosen"] == pytest.approx(trl._metrics["train"]["rewards/chosen"][0], rel=1e-5)
        assert stats["rewards/margin"] == pytest.approx(trl._metrics["train"]["rewards/margins"][0], rel=1e-5)
        assert stats["rewards/accuracy"] == pytest.approx(trl._metrics["train"]["rewards/accuracies"][0])


def test_simpo_equals_trl_cpo_and_orpo_equals_trl_odds_ratio():
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    gen = torch.Generator().manual_seed(5)
    chosen_mean, rejected_mean = -torch.rand(4, generator=gen) * 2, -torch.rand(4, generator=gen) * 2
    accelerator = SimpleNamespace(device="cpu")
    cpo = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=0.55 * 2.5, beta=2.5, label_smoothing=0.1,
                          accelerator=accelerator)
    trl_simpo = CPOTrainer.cpo_loss(cpo, chosen_mean, rejected_mean)[0]
    ours = pairs.simpo_loss(chosen_mean, rejected_mean, beta=2.5, gamma_beta_ratio=0.55, label_smoothing=0.1)
    torch.testing.assert_close(ours, trl_simpo)
    trl_odds = ORPOTrainer.odds_ratio_loss(SimpleNamespace(beta=0.1, accelerator=accelerator), chosen_mean, rejected_mean)[0]
    # TRL returns lambda * log sigmoid(log-odds) and subtracts it from its batch NLL: ours = -mean logp(y_w) - that
    torch.testing.assert_close(pairs.orpo_loss(chosen_mean, rejected_mean, lam=0.1), -chosen_mean - trl_odds)


def test_the_wrapper_reads_the_configured_reference_and_counts_pairs():
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    logps = -torch.arange(16, dtype=torch.float32).reshape(4, 4) / 10 * mask
    initial, start = torch.tensor([-0.1, -0.9, -0.5, -0.5]), torch.tensor([-0.4, -0.6, -0.3, -0.8])
    micro = TrainBatch(tokens=torch.zeros(4, 4, dtype=torch.long), response_mask=mask, advantages=torch.zeros(4),
                       old_logprobs=None, ref_sequence_logprobs=initial, start_sequence_logprobs=start)
    sums = (logps * mask).sum(1)
    for reference, ref in (("initial", initial), ("previous_iterate", start)):
        config = PairLossConfig(loss="dpo", beta=0.5, reference=reference)
        loss, stats = pair_loss(logps, micro, entropy=None, config=config, normalizer=4.0)  # 2 pairs here of 4 in the step
        expected = pairs.dpo_loss(sums[0::2], sums[1::2], ref[0::2], ref[1::2], beta=0.5)
        assert loss.item() == pytest.approx(expected.sum().item() / 4)
        assert stats["rewards/chosen"] == pytest.approx(0.5 * (sums[0::2] - ref[0::2]).sum().item() / 4)
    with pytest.raises(ValueError, match="whole pairs"):
        per_pair_loss(logps[:3], TrainBatch(tokens=micro.tokens[:3], response_mask=mask[:3], advantages=torch.zeros(3),
                                            old_logprobs=None, ref_sequence_logprobs=initial[:3]), PairLossConfig())
