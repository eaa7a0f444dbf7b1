"""The losses the trainer can minimise, by name, each in torch and (where written) as fused kernels.

    loss_fn = get_loss("grpo", fused=False)
    loss, stats = loss_fn(logprobs, micro, entropy=entropy, config=loss_config, normalizer=count)

The trainer calls a loss without knowing where its inputs came from: a loss reads what it needs from
the micro-batch (GRPO: per-sequence advantages and the sampler's log-probs). Recipes choose the loss by
name; preference-pair losses (DPO, IPO, SimPO, ORPO, SPPO) register here next, beside GRPO, with a
batch type of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from megatron_elo.loss.reference import PolicyLossConfig, PolicyLossStats, broadcast_to_tokens, policy_loss

if TYPE_CHECKING:
    from megatron_elo.trainer.step import TrainBatch

LossFn = Callable[..., tuple[torch.Tensor, PolicyLossStats]]


@dataclass(frozen=True, kw_only=True)
class LossSpec:
    """One registered loss: its torch implementation and, optionally, the fused one."""

    name: str
    torch: LossFn
    fused: LossFn | None = None


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` under its name (a second loss of the same name is refused)."""
    if spec.name in LOSSES:
        raise ValueError(f"a loss named {spec.name!r} is registered already")
    LOSSES[spec.name] = spec
    return spec


def get_loss(name: str, *, fused: bool) -> LossFn:
    """The loss ``name`` (``fused``: the Triton version, as trainer.kernels=triton asks)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    spec = LOSSES[name]
    if fused and spec.fused is None:
        raise ValueError(f"loss {name!r} has no fused kernel; use trainer.kernels=torch")
    return spec.fused if fused else spec.torch


def grpo_loss(logprobs: torch.Tensor, micro: TrainBatch, *, entropy: torch.Tensor | None, config: PolicyLossConfig,
              normalizer: float) -> tuple[torch.Tensor, PolicyLossStats]:
    """GRPO's clipped policy-gradient loss (+ KL, - entropy) of one micro-batch: [B, S] log-probs and
    entropy, the micro-batch's [B] advantages broadcast onto its response tokens."""
    advantages = broadcast_to_tokens(micro.advantages, micro.response_mask)
    return policy_loss(logprobs, micro.old_logprobs, advantages, micro.response_mask, config=config,
                       ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)


def fused_grpo_loss(logprobs: torch.Tensor, micro: TrainBatch, *, entropy: torch.Tensor | None, config: PolicyLossConfig,
                    normalizer: float) -> tuple[torch.Tensor, PolicyLossStats]:
    """``grpo_loss`` in one Triton kernel (kernels/policy_loss.py; broadcasts the advantages itself)."""
    from kernels import fused_policy_loss

    return fused_policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.response_mask, config=config,
                             ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)


register_loss(LossSpec(name="grpo", torch=grpo_loss, fused=fused_grpo_loss))
