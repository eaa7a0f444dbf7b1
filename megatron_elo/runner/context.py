"""What recipes build their stages from: the config, the world, the prompt sets, and the driver's
shared stages (opponents, judges), each built once on first use and closed by the runner.

    ctx = RunContext(cfg, world)
    opponents = ctx.opponents()        # FrozenPlayers on the driver, None on the other ranks
    judge = ctx.judge()                # the training judge (driver), started on first call
"""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig
from megatron_elo.data.source import load_prompt_sets
from megatron_elo.judges.base import Judge
from megatron_elo.parallel.world import World
from megatron_elo.players.frozen import FrozenPlayers


class RunContext:
    """Shared by every stage of one run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, world: World):
        self.cfg, self.world = cfg, world
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        self.train_prompts, self.held_out_prompts = load_prompt_sets(cfg)
        self._opponents: FrozenPlayers | None = None
        self._judge: Judge | None = None
        self._eval_judge: Judge | None = None

    def opponents(self) -> FrozenPlayers | None:
        """The opponents (engines start on their first answer the store lacks); None off the driver."""
        if self.world.is_driver and self._opponents is None:
            self._opponents = FrozenPlayers.from_config(self.cfg, world_size=self.world.size)
        return self._opponents

    def judge(self) -> Judge | None:
        """The training judge (an LLM judge's engine starts here); None off the driver."""
        if self.world.is_driver and self._judge is None:
            from megatron_elo.judges.build import build_judge

            self._judge = build_judge(self.cfg, world_size=self.world.size)
        return self._judge

    def eval_judge(self) -> Judge | None:
        """Evaluation's judge (the exact checker, or the training judge); None off the driver."""
        if self.world.is_driver and self._eval_judge is None:
            from megatron_elo.judges.build import build_eval_judge

            self._eval_judge = build_eval_judge(self.cfg, self.judge)
        return self._eval_judge

    def close(self) -> None:
        """Stop every engine the shared stages started (servers included)."""
        stages = {id(s): s for s in (self._opponents, self._judge, self._eval_judge) if s is not None}
        for stage in stages.values():  # the eval judge may be the training judge
            stage.close()
        self._opponents = self._judge = self._eval_judge = None
