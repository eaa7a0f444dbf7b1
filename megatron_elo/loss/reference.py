"""The loss side of an RL step, in plain torch: the reference every fused kernel must match.

Shapes: B sequences (one per policy sample), T response positions, V vocabulary, H hidden.
Units: log-probs in nats; rewards as given (pairwise: 1 win / 0 loss / tie reward).

    advantages = group_advantages(rewards, valid, std_normalize=True)          # [P, n]
    token_adv  = broadcast_to_tokens(advantages.reshape(-1), response_mask)    # [B, T]
    loss, stats = policy_loss(logp, old_logp, token_adv, response_mask, ref_logprobs=ref, entropy=ent, config=cfg)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KlEstimator = Literal["k1", "k3"]
LossAgg = Literal["token_mean", "seq_mean"]


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor, *, std_normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages per prompt group.

    rewards: [P, n] float, valid: [P, n] bool (False: the game was dropped).
    A = (r - mean(r_valid)) / (std(r_valid) + eps) with the unbiased std (as TRL and verl), or only
    centred when ``std_normalize`` is False. Invalid samples get 0; a group with fewer than two
    valid samples gets 0 everywhere (nothing to compare against). Returns [P, n] float32.
    """
    if rewards.shape != valid.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and valid {tuple(valid.shape)} must both be [P, n]")
    rewards = rewards.float()
    mask = valid.float()
    count = mask.sum(dim=1, keepdim=True)
    mean = (rewards * mask).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = (rewards - mean) * mask
    if std_normalize:
        variance = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        centred = centred / (variance.sqrt() + eps)
    return torch.where(count >= 2, centred, torch.zeros_like(centred))


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence advantages [B] onto response tokens: [B, T], zero where the mask is 0."""
    return advantages.float()[:, None] * response_mask.float()


# ---------------------------------------------------------------- log-probs and entropy


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) and the entropy of the full distribution at each position, computed in fp32.

    logits: [..., V]; tokens: [...] int64. Returns two tensors shaped like ``tokens``.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    chosen = log_probs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return chosen, entropy


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused-kernel contract, materialising the logits: hidden [N, H] @ weight[V, H].T -> [N, V]."""
    return token_logprobs_and_entropy(hidden @ weight.T, tokens)


# ---------------------------------------------------------------- policy-gradient loss


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KlEstimator) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from sampled tokens.

    k1: logp - ref_logp (unbiased, can be negative); k3: exp(ref - logp) - (ref - logp) - 1 (>= 0).
    """
    log_ratio = ref_logprobs.float() - logprobs.float()
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"kl estimator must be 'k1' or 'k3', got {estimator!r}")


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                      clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) and whether the
    clipped branch was taken (bool). All inputs [B, T]; rho = exp(logp - old_logp)."""
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def default_normalizer(mask: torch.Tensor, mode: LossAgg) -> float:
    """What ``aggregate`` divides by when no global count is given: masked tokens (token_mean) or
    sequences with at least one (seq_mean). mask: [B, T]."""
    mask = mask.bool()
    return float(mask.sum() if mode == "token_mean" else (mask.sum(dim=-1) > 0).sum())


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: LossAgg, *, normalizer: float | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar over masked tokens.

    token_mean: sum(values * mask) / normalizer (default: number of masked tokens).
    seq_mean:   sum over sequences of their token mean / normalizer (default: sequences with a token).
    Pass the global count as ``normalizer`` when a batch is split into micro-batches or DP shards,
    so that the summed micro-batch losses equal the loss of the whole batch.
    """
    if mode not in ("token_mean", "seq_mean"):
        raise ValueError(f"loss aggregation must be 'token_mean' or 'seq_mean', got {mode!r}")
    count = default_normalizer(mask, mode) if normalizer is None else normalizer
    mask = mask.float()
    if mode == "token_mean":
        total = (values * mask).sum()
    else:
        total = ((values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).sum()
    return total / max(float(count), 1.0)


@dataclass(frozen=True, kw_only=True)
class PolicyLossConfig:
    """The knobs of ``policy_loss`` (a subset of TrainerConfig)."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    kl_estimator: KlEstimator = "k3"
    entropy_coef: float = 0.0
    loss_agg: LossAgg = "token_mean"

    @classmethod
    def from_trainer(cls, trainer) -> PolicyLossConfig:
        """Pick the loss fields out of a ``TrainerConfig``."""
        return cls(clip_low=trainer.clip_low, clip_high=trainer.clip_high, kl_coef=trainer.kl_coef,
                   kl_estimator=trainer.kl_estimator, entropy_coef=trainer.entropy_coef, loss_agg=trainer.loss_agg)


@dataclass(frozen=True, kw_only=True)
class PolicyLossStats:
    """Detached diagnostics of one loss evaluation (aggregated like the loss)."""

    pg_loss: float
    kl: float
    entropy: float
    clip_fraction: float
    ratio_mean: float


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                config: PolicyLossConfig, ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                normalizer: float | None = None) -> tuple[torch.Tensor, PolicyLossStats]:
    """Clipped policy-gradient loss + kl_coef * KL - entropy_coef * entropy, aggregated over ``mask``.

    All tensors [B, T]; ``advantages`` already broadcast to tokens. ``ref_logprobs`` is required
    when kl_coef > 0, ``entropy`` when entropy_coef > 0. Returns (scalar loss, stats).
    """
    active = mask.bool()
    # off the mask (prompt, padding) any exp() of a log-ratio may overflow, and inf * 0 is NaN: there the
    # log-probs are replaced by the other side's (log-ratio 0, no gradient)
    surrogate, clipped = clipped_surrogate(torch.where(active, logprobs, old_logprobs), old_logprobs, advantages,
                                           clip_low=config.clip_low, clip_high=config.clip_high)
    per_token = surrogate
    kl = torch.zeros_like(surrogate)
    if config.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (the frozen reference model's log-probs)")
        kl = kl_penalty(torch.where(active, logprobs, ref_logprobs), ref_logprobs, config.kl_estimator)
        per_token = per_token + config.kl_coef * kl
    if config.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        per_token = per_token - config.entropy_coef * entropy.float()
    loss = aggregate(per_token, mask, config.loss_agg, normalizer=normalizer)
    with torch.no_grad():
        ratio = torch.exp(torch.where(active, logprobs.float() - old_logprobs.float(), 0.0))
        stats = PolicyLossStats(
            pg_loss=aggregate(surrogate, mask, config.loss_agg, normalizer=normalizer).item(),
            kl=aggregate(kl, mask, config.loss_agg, normalizer=normalizer).item(),
            entropy=aggregate(entropy.float(), mask, config.loss_agg, normalizer=normalizer).item() if entropy is not None else float("nan"),
            clip_fraction=aggregate(clipped.float(), mask, "token_mean").item(),
            ratio_mean=aggregate(ratio, mask, "token_mean").item(),
        )
    return loss, stats
