"""A look-ahead copy of a trained player (Temporal Self-Rewarding's M_f): train ahead, sample, put back.

    ahead = Lookahead(trainer)        # M_i's weights, Adam state and step counter, copied to the CPU (collective)
    updater.train(phase_one_rows)     # the trainer is now M_f: sync it to the engine and sample
    ahead.restore()                   # M_i again, bitwise (collective); M_f is gone, its memory with it

One trainer's memory serves both models: the copy lives on the CPU (fp32 main weights and the two Adam
moments of this rank's (tp, pp) shard, whole: gathered over DP by the distributed optimizer, 12 bytes per
parameter of the shard on every DP rank), so the look-ahead needs no second model on the device.
"""

from __future__ import annotations

from megatron_elo.trainer.step import PolicyTrainer


class Lookahead:
    """The trainer's state at construction, to restore after training ahead (see the module docstring)."""

    def __init__(self, trainer: PolicyTrainer):
        self.trainer = trainer
        self.state = trainer.optimizer.full_state(keep=True)  # collective over DP
        self.step = trainer.step

    def restore(self) -> None:
        """Weights, optimizer state and step counter back to the copy's (collective over DP)."""
        self.trainer.optimizer.load_full_state(self.state, adam_steps=self.step)
        self.trainer.step = self.step
