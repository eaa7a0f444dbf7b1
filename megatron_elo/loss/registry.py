"""The losses the trainer can minimise, by name, each in torch and (where written) as fused kernels.

    spec = get_loss_spec("dpo")
    loss_fn = spec.pick(fused=False)
    count = spec.count(batch, loss_config)                 # what the step's loss is divided by (all DP ranks summed)
    loss, stats = loss_fn(logprobs, micro, entropy=entropy, config=loss_config, normalizer=count)
    metrics = spec.finish(summed_stats, response_tokens)   # the step's statistics by name

The trainer calls a loss without knowing where its inputs came from: a loss reads what it needs from
the micro-batch (GRPO: per-sequence advantages and the sampler's log-probs; the pair losses: rows in
(chosen, rejected) pairs with their references' sequence log-probs, ``loss/preference.py``) and
returns statistics that sum over micro-batches and DP ranks (``stat_names``, in that order).
The pair losses have no kernel of their own: their inputs are [B] sequence sums of the per-token
log-probs, which ``trainer.kernels=triton`` already computes with the fused linear log-prob kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from megatron_elo.loss.preference import PAIR_LOSSES, PAIR_STATS, pair_loss
from megatron_elo.loss.reference import PolicyLossConfig, PolicyLossStats, broadcast_to_tokens, policy_loss

if TYPE_CHECKING:
    from megatron_elo.trainer.step import TrainBatch

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def token_count(batch: TrainBatch, config: PolicyLossConfig) -> float:
    """This rank's share of GRPO's normaliser: response tokens (token_mean) or sequences with one (seq_mean)."""
    mask = batch.response_mask
    return float(mask.sum() if config.loss_agg == "token_mean" else (mask.sum(dim=1) > 0).sum())


def pair_count(batch: TrainBatch, config) -> float:
    """This rank's share of a pair loss's normaliser: its pairs (two rows each)."""
    return len(batch) / 2


def grpo_metrics(sums: dict[str, float], response_tokens: float) -> dict[str, float]:
    """GRPO's step statistics from their sums: the clipped-token count becomes a fraction."""
    metrics = {k: v for k, v in sums.items() if k != "clipped_tokens"}
    return metrics | {"clip_fraction": sums["clipped_tokens"] / max(response_tokens, 1.0)}


@dataclass(frozen=True, kw_only=True)
class LossSpec:
    """One registered loss: its torch implementation and, optionally, the fused one; what its step is
    normalised by (``count``, this rank's share) and the statistics it reports (summable, in order)."""

    name: str
    torch: LossFn
    fused: LossFn | None = None
    count: Callable[..., float] = token_count
    stat_names: tuple[str, ...] = ("pg_loss", "kl", "entropy", "clipped_tokens")
    finish: Callable[[dict[str, float], float], dict[str, float]] = grpo_metrics
    needs_entropy: bool = True  # GRPO logs (and may weight) the entropy; the pair losses skip its vocab pass

    def pick(self, *, fused: bool) -> LossFn:
        """The torch or the fused implementation (``trainer.kernels``)."""
        if fused and self.fused is None:
            raise ValueError(f"loss {self.name!r} has no fused kernel; use trainer.kernels=torch")
        return self.fused if fused else self.torch


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` under its name (a second loss of the same name is refused)."""
    if spec.name in LOSSES:
        raise ValueError(f"a loss named {spec.name!r} is registered already")
    LOSSES[spec.name] = spec
    return spec


def get_loss_spec(name: str) -> LossSpec:
    """The registered loss ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name]


def get_loss(name: str, *, fused: bool) -> LossFn:
    """The loss ``name`` (``fused``: the Triton version, as trainer.kernels=triton asks)."""
    return get_loss_spec(name).pick(fused=fused)


def _summable(stats: PolicyLossStats, micro: TrainBatch) -> dict[str, float]:
    return {"pg_loss": stats.pg_loss, "kl": stats.kl, "entropy": stats.entropy,
            "clipped_tokens": stats.clip_fraction * float(micro.response_mask.sum())}


def grpo_loss(logprobs: torch.Tensor, micro: TrainBatch, *, entropy: torch.Tensor | None, config: PolicyLossConfig,
              normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped policy-gradient loss (+ KL, - entropy) of one micro-batch: [B, S] log-probs and
    entropy, the micro-batch's [B] advantages broadcast onto its response tokens."""
    advantages = broadcast_to_tokens(micro.advantages, micro.response_mask)
    loss, stats = policy_loss(logprobs, micro.old_logprobs, advantages, micro.response_mask, config=config,
                              ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)
    return loss, _summable(stats, micro)


def fused_grpo_loss(logprobs: torch.Tensor, micro: TrainBatch, *, entropy: torch.Tensor | None, config: PolicyLossConfig,
                    normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``grpo_loss`` in one Triton kernel (kernels/policy_loss.py; broadcasts the advantages itself)."""
    from kernels import fused_policy_loss

    loss, stats = fused_policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.response_mask, config=config,
                                    ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)
    return loss, _summable(stats, micro)


register_loss(LossSpec(name="grpo", torch=grpo_loss, fused=fused_grpo_loss))
for _name in PAIR_LOSSES:  # one function for all: the config's ``loss`` picks the formula
    register_loss(LossSpec(name=_name, torch=pair_loss, fused=pair_loss, count=pair_count, stat_names=PAIR_STATS,
                           finish=lambda sums, tokens: dict(sums), needs_entropy=False))
