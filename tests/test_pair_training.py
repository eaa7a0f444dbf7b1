"""Pair losses through the trainer: the loss equals the formula on transformers' sequence log-probs, and
loss, statistics, gradients and the update are the same across TP2 / PP2 / DP2 (and the fused log-prob
path) as in one process (2 processes over gloo)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_elo.loss import pairs
from megatron_elo.loss.preference import PairLossConfig
from megatron_elo.parallel.spawn import run_distributed
from megatron_elo.trainer.step import TrainBatch
from tests.test_trainer import ARCH, TRAINER, _dp_slice, _merge

pytest.importorskip("megatron.core")

INPO = PairLossConfig(loss="inpo", beta=0.5, inpo_tau_ratio=1 / 3)  # reads both references: the widest wiring
PAIR_TRAINER = dataclasses.replace(TRAINER, kl_coef=0.0, entropy_coef=0.0, lr=1e-3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from megatron_elo.models.tiny import make_tiny_hf_model

    return str(make_tiny_hf_model(ARCH, tmp_path_factory.mktemp("pair_policy") / "hf", seed=13))


def hf_sequence_logprobs(model_dir: str, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] summed response log-probs by transformers (the independent reference)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (logp * mask[:, 1:]).sum(1)


def make_pair_batch(model_dir: str, *, seed: int, pairs_: int = 4, seq: int = 12) -> TrainBatch:
    """``pairs_`` pairs sharing a prompt per pair, answers of different lengths, references near the model."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, ARCH.vocab_size, (2 * pairs_, seq), generator=gen)
    prompt_len = torch.randint(2, 5, (pairs_,), generator=gen).repeat_interleave(2)
    for pair in range(pairs_):  # chosen and rejected answer the same prompt
        tokens[2 * pair + 1, : prompt_len[2 * pair]] = tokens[2 * pair, : prompt_len[2 * pair]]
    end = torch.randint(7, seq + 1, (2 * pairs_,), generator=gen)
    positions = torch.arange(seq)[None]
    mask = (positions >= prompt_len[:, None]) & (positions < end[:, None])
    sums = hf_sequence_logprobs(model_dir, tokens, mask)
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.zeros(2 * pairs_), old_logprobs=None,
                      ref_sequence_logprobs=sums + 0.5 * torch.randn(2 * pairs_, generator=gen),
                      start_sequence_logprobs=sums + 0.3 * torch.randn(2 * pairs_, generator=gen))


def pair_steps(rank, world_size, model_dir, tp, pp, batches, loss_config, kernels="torch"):
    """Gradients of the first batch, then the weights after one optimizer step per batch."""
    import torch.distributed as dist

    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.trainer.build import build_policy_trainer

    layout = ParallelLayout(tp=tp, pp=pp, dp=dist.get_world_size() // (tp * pp))
    config = dataclasses.replace(PAIR_TRAINER, kernels=kernels)
    trainer = build_policy_trainer(model_dir, layout, config, total_steps=10, pad_vocab_to_multiple_of=16,
                                   loss=loss_config.loss, loss_config=loss_config)
    stats = trainer.forward_backward(_dp_slice(batches[0], trainer.groups).to(trainer.device))
    stats.pop("logprobs")
    grads = {n: g.cpu().clone() for n, g in trainer.optimizer.named_grads().items()}
    norm, _ = trainer.optimizer_step()
    for batch in batches[1:]:
        trainer.train_step(_dp_slice(batch, trainer.groups))
    weights = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    return trainer.groups.coords, stats, norm, grads, weights


@pytest.fixture(scope="module")
def single(model_dir):
    batches = [make_pair_batch(model_dir, seed=s) for s in range(2)]
    return batches, run_distributed(pair_steps, 1, model_dir, 1, 1, batches, INPO)[0]


def test_the_trainers_pair_loss_is_the_formula_on_transformers_log_probs(model_dir, single):
    batches, (_, stats, _, _, _) = single
    batch = batches[0]
    sums = hf_sequence_logprobs(model_dir, batch.tokens, batch.response_mask)
    ref, start = batch.ref_sequence_logprobs, batch.start_sequence_logprobs
    expected = pairs.inpo_loss(sums[0::2], sums[1::2], ref[0::2], ref[1::2], start[0::2], start[1::2],
                               eta=0.5, tau=0.5 / 3).mean()
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert stats["pair_loss"] == pytest.approx(expected.item(), rel=1e-5)
    margin = 0.5 * ((sums[0::2] - start[0::2]) - (sums[1::2] - start[1::2]))  # INPO's rewards: against the start
    assert stats["rewards/margin"] == pytest.approx(margin.mean().item(), rel=1e-4, abs=1e-6)
    assert stats["logps/chosen"] == pytest.approx(sums[0::2].mean().item(), rel=1e-5)


@pytest.mark.parametrize("tp, pp, dp, kernels", [(2, 1, 1, "torch"), (1, 1, 2, "torch"), (1, 2, 1, "torch"),
                                                 (1, 1, 1, "triton")])
def test_pair_loss_grads_and_updates_match_the_single_process_run(model_dir, single, tp, pp, dp, kernels):
    """DP2 splits the pairs (each rank 2 of 4), never a pair: micro-batches of 2 rows hold one pair each."""
    if kernels == "triton":
        pytest.importorskip("triton")
        if torch.cuda.is_available():
            pytest.skip("CPU ranks run Triton through its interpreter, which is off where CUDA is present")
    batches, (_, ref_stats, ref_norm, ref_grads, ref_weights) = single
    results = run_distributed(pair_steps, tp * pp * dp, model_dir, tp, pp, batches, INPO, kernels)
    grads, weights = _merge(results, tp, pp)
    for _, stats, norm, _, _ in results:
        assert stats.keys() == ref_stats.keys()
        for key, value in ref_stats.items():
            assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert norm == pytest.approx(ref_norm, rel=1e-5)
    # the fused kernel sums the vocabulary in blocks: its rounding differs (up to ~1e-5 on the embedding's
    # gradients of ~3 here, whose squared INPO loss is larger than GRPO's)
    atol = 2e-5 if kernels == "triton" else 2e-6
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=1e-4, msg=name)
        conditioned = ref_grads[name].abs() > 1e-5  # Adam turns rounding noise on ~0 grads into +-lr (test_trainer.py)
        torch.testing.assert_close(weights[name][conditioned], ref_weights[name][conditioned], atol=atol, rtol=1e-4,
                                   msg=name)
