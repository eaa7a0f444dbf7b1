"""The pair losses as the trainer calls them: one micro-batch's per-token log-probs -> a loss and its
summable statistics.

Rows of a pair batch come in pairs, chosen first: rows 2i and 2i + 1 are pair i's chosen and rejected
answers to the same prompt (the trainer keeps a pair in one micro-batch: even micro-batch and DP
shares). Sequence log-probs are the sums of the response tokens' log-probs (means for the
length-normalised losses); the references' sums travel with the batch, computed once per pair:
``ref_sequence_logprobs`` (the initial model) and ``start_sequence_logprobs`` (the weights at the
iteration's start, SPARTA's / INPO's "previous iterate").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from megatron_elo.loss import pairs

if TYPE_CHECKING:
    from megatron_elo.trainer.step import TrainBatch

PairLossName = Literal["dpo", "ipo", "simpo", "orpo", "sppo", "inpo"]
PAIR_LOSSES: tuple[str, ...] = ("dpo", "ipo", "simpo", "orpo", "sppo", "inpo")
USES_START = {"sppo", "inpo"}  # losses that read the iteration's start whatever the reference setting
NO_REFERENCE = {"simpo", "orpo"}
PAIR_STATS = ("pair_loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
              "logps/chosen", "logps/rejected")


@dataclass(frozen=True, kw_only=True)
class PairLossConfig:
    """The knobs of the pair losses (``algorithm.pairs``; see loss/pairs.py for each)."""

    loss: PairLossName = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    robust: bool = False
    ipo_length_normalize: bool = False
    simpo_gamma_beta_ratio: float = 0.55
    orpo_lambda: float = 0.1
    inpo_tau_ratio: float = 1.0 / 3.0
    reference: Literal["initial", "previous_iterate"] = "initial"

    @classmethod
    def from_pairs(cls, pairs_config) -> PairLossConfig:
        """Pick the loss fields out of an ``algorithm.pairs`` config."""
        return cls(**{name: getattr(pairs_config, name) for name in cls.__dataclass_fields__})

    def needs_initial_reference(self) -> bool:
        """Whether the frozen initial model's log-probs are read (DPO / IPO with reference=initial, INPO)."""
        return self.loss == "inpo" or (self.loss not in NO_REFERENCE | USES_START and self.reference == "initial")

    def needs_start(self) -> bool:
        """Whether the iteration start's log-probs are read (SPPO, INPO, or reference=previous_iterate)."""
        return self.loss in USES_START or (self.loss not in NO_REFERENCE and self.reference == "previous_iterate")


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S] token log-probs and response mask -> (sum over the response [B], response tokens [B])."""
    mask = mask.float()
    return (logprobs.float() * mask).sum(dim=1), mask.sum(dim=1)


def _chosen_rejected(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[2P] rows, chosen first in each pair -> ([P] chosen, [P] rejected)."""
    if values.shape[0] % 2:
        raise ValueError(f"a pair micro-batch holds whole pairs (chosen, rejected): got {values.shape[0]} rows")
    pairs_ = values.reshape(-1, 2)
    return pairs_[:, 0], pairs_[:, 1]


def per_pair_loss(logprobs: torch.Tensor, micro: TrainBatch, config: PairLossConfig) -> tuple[torch.Tensor, torch.Tensor,
                                                                                                torch.Tensor, torch.Tensor]:
    """Per-pair loss [P], the chosen / rejected implicit rewards [P] (beta x log-ratio to the loss's
    reference; SimPO / ORPO: beta x mean log-prob, as TRL logs them) and the chosen / rejected sequence
    log-probs [P]."""
    total, tokens = sequence_logprobs(logprobs, micro.response_mask)
    chosen, rejected = _chosen_rejected(total)
    chosen_tokens, rejected_tokens = _chosen_rejected(tokens)
    name, beta = config.loss, config.beta
    if name in NO_REFERENCE:
        chosen_mean, rejected_mean = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
        if name == "simpo":
            loss = pairs.simpo_loss(chosen_mean, rejected_mean, beta=beta, gamma_beta_ratio=config.simpo_gamma_beta_ratio,
                                    label_smoothing=config.label_smoothing)
        else:
            loss = pairs.orpo_loss(chosen_mean, rejected_mean, lam=config.orpo_lambda)
        return loss, beta * chosen_mean.detach(), beta * rejected_mean.detach(), chosen, rejected
    start = _chosen_rejected(micro.start_sequence_logprobs.float()) if config.needs_start() else None
    initial = _chosen_rejected(micro.ref_sequence_logprobs.float()) if config.needs_initial_reference() else None
    if name == "sppo":
        wins = _chosen_rejected(micro.win_probs.float()) if micro.win_probs is not None else (None, None)
        loss = pairs.sppo_loss(chosen, rejected, *start, beta=beta, chosen_win=wins[0], rejected_win=wins[1])
        reference = start
    elif name == "inpo":
        loss = pairs.inpo_loss(chosen, rejected, *initial, *start, eta=beta, tau=beta * config.inpo_tau_ratio)
        reference = start
    else:
        reference = initial if config.reference == "initial" else start
        if name == "dpo":
            loss = pairs.dpo_loss(chosen, rejected, *reference, beta=beta, label_smoothing=config.label_smoothing,
                                  robust=config.robust)
        else:
            lengths = (chosen_tokens, rejected_tokens) if config.ipo_length_normalize else (None, None)
            loss = pairs.ipo_loss(chosen, rejected, *reference, beta=beta, chosen_tokens=lengths[0],
                                  rejected_tokens=lengths[1])
    return loss, beta * (chosen - reference[0]).detach(), beta * (rejected - reference[1]).detach(), chosen, rejected


def pair_loss(logprobs: torch.Tensor, micro: TrainBatch, *, entropy: torch.Tensor | None, config: PairLossConfig,
              normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's summed pair loss / ``normalizer`` (the step's global pair count), and its
    statistics divided alike (so that summing them over micro-batches and DP ranks gives step means)."""
    loss, chosen_reward, rejected_reward, chosen, rejected = per_pair_loss(logprobs, micro, config)
    scale = 1.0 / max(normalizer, 1.0)
    with torch.no_grad():
        margin = chosen_reward - rejected_reward
        values = (loss.detach(), chosen_reward, rejected_reward, margin, (margin > 0).float(), chosen.detach(),
                  rejected.detach())
        stats = {name: float(value.sum()) * scale for name, value in zip(PAIR_STATS, values, strict=True)}
    return loss.sum() * scale, stats
