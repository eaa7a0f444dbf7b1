"""A trained player's update on preference pairs: chosen and rejected rows side by side, the references'
sequence log-probs computed once per pair, E shuffled passes of optimizer steps.

    rows = PairRows.from_rollouts(batch, rollouts, signal)        # or a pair file's (data/pairs.py)
    stats = PairUpdate(player, cfg).train(rows, step=step)        # collective; one StepStats per optimizer step

Pair i goes to DP rank i % dp (the last len % dp pairs wait: no rank may get an empty share); each
optimizer step takes ``trainer.global_batch_size / 2`` pairs (fewer in an iteration's last step), every
rank its ``1 / dp`` of them, rows interleaved chosen / rejected so that a pair never straddles two
micro-batches (micro_batch_size is even). References, per rank, for its own pairs: the frozen initial
model (``needs_initial_reference``) and the weights before the update (``needs_start``: the iteration's
start, SPARTA's / INPO's previous iterate). The next iteration's start is these weights after the update,
so a "previous iterate" reference moves by itself. The LR of every optimizer step of an iteration is the
schedule's at that iteration: ``trainer.steps`` iterations span warmup and decay.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_elo.config.schema import RunConfig
from megatron_elo.data.pairs import PairRows
from megatron_elo.loss.preference import PairLossConfig, sequence_logprobs
from megatron_elo.trainer.step import PolicyTrainer, StepStats, TrainBatch


def _sequence_sums(model: PolicyTrainer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] summed response log-probs under ``model``'s current weights (zeros on pipeline stages before
    the last, which compute no loss)."""
    logprobs = model.compute_logprobs(tokens, mask=mask)
    return sequence_logprobs(logprobs, mask)[0] if logprobs is not None else torch.zeros(len(tokens))


class PairUpdate:
    """Trains one player's trainer on pairs (see the module docstring)."""

    def __init__(self, *, trainer: PolicyTrainer, reference: PolicyTrainer | None, cfg: RunConfig, pad_id: int):
        self.trainer, self.reference, self.pad_id = trainer, reference, pad_id
        self.pairs_config = cfg.algorithm.pairs
        self.loss = PairLossConfig.from_pairs(self.pairs_config)
        self.pairs_per_step = cfg.trainer.global_batch_size // 2
        self.seed = cfg.seed
        if self.loss.needs_initial_reference() and reference is None:
            raise ValueError(f"algorithm.pairs.loss={self.loss.loss} with reference={self.loss.reference} needs the "
                             f"frozen initial model (the recipe builds it)")

    def train(self, rows: PairRows, *, step: int, epochs: int = 1) -> list[StepStats]:
        """``epochs`` shuffled passes over ``rows`` (seeded by the run's seed, ``step`` and the pass),
        ``pairs_per_step`` pairs per optimizer step; [] when there are fewer pairs than DP ranks."""
        dp, rank = self.trainer.groups.layout.dp, self.trainer.groups.coords.dp_rank
        usable = len(rows) - len(rows) % dp
        if usable == 0:
            return []
        mine = list(range(rank, usable, dp))
        tokens, mask, wins = rows.tensors(mine, pad_id=self.pad_id)
        initial = _sequence_sums(self.reference, tokens, mask) if self.loss.needs_initial_reference() else None
        start = _sequence_sums(self.trainer, tokens, mask) if self.loss.needs_start() else None
        soft = self.loss.loss == "sppo" and self.pairs_config.sppo_targets == "win_rate"
        per_step = max(self.pairs_per_step // dp, 1)  # this rank's pairs per optimizer step
        self.trainer.schedule_position = step  # the LR schedule runs over iterations (PolicyTrainer.current_lr)
        stats = []
        for epoch in range(epochs):
            order = np.random.default_rng([self.seed, step, epoch, 7]).permutation(len(mine))
            for first in range(0, len(mine), per_step):
                picked = order[first:first + per_step]
                rows_here = torch.tensor([r for pair in picked for r in (2 * pair, 2 * pair + 1)])
                batch = TrainBatch(tokens=tokens[rows_here], response_mask=mask[rows_here],
                                   advantages=torch.zeros(len(rows_here)), old_logprobs=None,
                                   ref_sequence_logprobs=None if initial is None else initial[rows_here],
                                   start_sequence_logprobs=None if start is None else start[rows_here],
                                   win_probs=wins[rows_here] if soft else None)
                stats.append(self.trainer.train_step(batch))
        return stats
