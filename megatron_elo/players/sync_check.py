"""Stale engine weights, caught at run time: the engine's log-prob of each token it sampled against the
trainer's recomputed log-prob of the same token before the update.

    gap = SamplerGap.measure(old_logprobs, sampler_logprobs, mask, replica_of_row, replicas=2)   # this rank's rows
    gap = gap.reduced(device, groups)            # over every rank of the trainer (collective)
    gap.metrics()                                # {"sync/logprob_diff_mean": ..., "_max": ..., per replica}

After a correct weight sync the two differ only by numerics (fp32 CPU: ~1e-6 nats; bf16 GPU kernels:
~1e-2); a sync that silently left old weights (the failure users of other frameworks report) shows as
a gap of the size of an update. Both log-probs are of the model's raw distribution at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True, kw_only=True)
class SamplerGap:
    """|trainer - sampler| log-prob over response tokens: per engine replica sums and counts, and the max."""

    sums: torch.Tensor  # [replicas] float64
    counts: torch.Tensor  # [replicas] float64
    largest: float

    @classmethod
    def empty(cls, replicas: int) -> SamplerGap:
        """No tokens yet."""
        return cls(sums=torch.zeros(replicas, dtype=torch.float64), counts=torch.zeros(replicas, dtype=torch.float64),
                   largest=0.0)

    @classmethod
    def measure(cls, trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, replica_of_row: torch.Tensor, *,
                replicas: int) -> SamplerGap:
        """trainer / sampler log-probs and mask [B, S] of this rank's rows; replica_of_row [B] int64."""
        gap = (trainer.double() - sampler.double()).abs() * mask
        sums = torch.zeros(replicas, dtype=torch.float64).index_add_(0, replica_of_row, gap.sum(dim=1))
        counts = torch.zeros(replicas, dtype=torch.float64).index_add_(0, replica_of_row, mask.sum(dim=1).double())
        return cls(sums=sums, counts=counts, largest=float(gap.max()) if gap.numel() else 0.0)

    def plus(self, other: SamplerGap) -> SamplerGap:
        """Both gaps' tokens together."""
        return SamplerGap(sums=self.sums + other.sums, counts=self.counts + other.counts,
                          largest=max(self.largest, other.largest))

    def reduced(self, device: torch.device, groups) -> SamplerGap:
        """Summed (and maxed) over every rank of the trainer's layout (``groups``: its ProcessGroups; the world,
        or its slice of the world), through its model-replica then its DP group: collective. Ranks that hold the
        same rows (TP) count them twice, which leaves the means as they are."""
        totals = torch.cat([self.sums, self.counts]).to(device)
        largest = torch.tensor([self.largest], dtype=torch.float64, device=device)
        for group in (groups.model, groups.dp):  # tp x pp, then across the replicas: every rank of the layout once
            if dist.get_world_size(group) > 1:
                dist.all_reduce(totals, group=group)
                dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=group)
        sums, counts = totals.cpu().chunk(2)
        return SamplerGap(sums=sums, counts=counts, largest=float(largest.item()))

    @property
    def mean(self) -> float:
        """Mean gap in nats over every response token."""
        return float(self.sums.sum() / self.counts.sum().clamp(min=1))

    def metrics(self) -> dict[str, float]:
        """sync/logprob_diff_mean and _max, and the mean per engine replica when there are several."""
        out = {"sync/logprob_diff_mean": self.mean, "sync/logprob_diff_max": self.largest}
        if len(self.sums) > 1:
            means = self.sums / self.counts.clamp(min=1)
            out.update({f"sync/logprob_diff_mean/replica{r}": float(m) for r, m in enumerate(means)})
        return out


class StaleEngineWeights(RuntimeError):
    """The engine sampled with weights the trainer does not have (rollout.stale_weights_action=stop)."""
