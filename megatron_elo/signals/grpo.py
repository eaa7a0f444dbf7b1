"""GRPO's signal: outcomes -> rewards per prompt group -> group-normalised advantages.

    builder = GroupAdvantages(n_per_prompt=8, std_normalize=True, kernels="torch", device=trainer.device)
    signal = builder.build(outcomes, prompt_ids)     # GroupSignal: rewards, valid [P, n]; advantages [P * n]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_elo.flow import GroupSignal, Outcome
from megatron_elo.loss.reference import group_advantages
from megatron_elo.signals.outcomes import outcome_matrix


class GroupAdvantages:
    """(r - mean) / std over each prompt's n samples (or centring only), in torch or the Triton kernel."""

    def __init__(self, *, n_per_prompt: int, std_normalize: bool, kernels: str, device: torch.device):
        self.n_per_prompt, self.std_normalize, self.kernels, self.device = n_per_prompt, std_normalize, kernels, device

    def build(self, outcomes: Sequence[Outcome], prompt_ids: Sequence[str]) -> GroupSignal:
        """The step's signal from its outcomes (``prompt_ids``: the groups' order)."""
        rewards, valid = outcome_matrix(outcomes, prompt_ids, self.n_per_prompt)
        advantages = self.advantages(torch.tensor(rewards), torch.tensor(valid)).reshape(-1)
        return GroupSignal(rewards=rewards, valid=valid, advantages=advantages)

    def advantages(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[P, n] outcomes -> [P, n] group-normalised advantages (torch reference or the Triton kernel;
        the fused loss broadcasts them onto tokens itself, so no token mask is passed here)."""
        if self.kernels == "torch":
            return group_advantages(rewards, valid, std_normalize=self.std_normalize)
        from kernels import token_advantages

        no_tokens = torch.zeros(rewards.numel(), 0, dtype=torch.bool, device=self.device)
        advantages = token_advantages(rewards.to(self.device), valid.to(self.device), no_tokens,
                                      std_normalize=self.std_normalize)[0]
        return advantages.reshape(rewards.shape).cpu()
