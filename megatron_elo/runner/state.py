"""One registry of the run's stateful stages, saved and restored together with the trainer.

    registry = StateRegistry(run_state)
    registry.register_stages({"prompts": source, "pool": pool, "judge": judge, "matchmaker": mm})
    registry.save(trainers, checkpoints_dir, keep_last=2)         # collective; {name: trainer}, the first's shards main
    registry.resume(trainers, checkpoint)                           # collective

A stage is stateful when it has ``state_dict`` / ``load_state_dict`` (JSON, kept in the checkpoint's
meta.json: data position, Elo pool, judge statistics, matchmaker state) or ``rank_state_dict`` /
``load_rank_state_dict`` (torch objects per rank, e.g. an overlapped run's pending batch). Recipes hand
every stage they build to ``register_stages``, which keeps the stateful ones, and ``unlisted_stages``
finds a stateful attribute of a recipe missing from its ``stages()`` (the runner refuses to start), so a
new stage cannot be forgotten; the RNG states and the trainer's shard are saved by ``trainer.checkpoint`` itself. Only the
stages that exist on a rank are saved or restored there (the prompt source, the judge: the driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_elo.trainer.step import PolicyTrainer


@dataclass
class RunState:
    """The runner's own state: where the run is and what it has recorded."""

    step: int = 0
    elo_history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    mlflow_run_id: str | None = None
    trace: list[dict] = field(default_factory=list)  # per step: the curriculum's measurements (report.step_trace)

    def state_dict(self) -> dict:
        """JSON of every field."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
        self.step, self.mlflow_run_id = int(state["step"]), state["mlflow_run_id"]
        self.elo_history, self.evals = list(state["elo_history"]), list(state["evals"])
        self.trace = list(state.get("trace", []))  # absent in checkpoints written before it existed


def is_stateful(stage: object) -> bool:
    """Whether ``stage`` has state to checkpoint (JSON or per rank)."""
    return hasattr(stage, "state_dict") or hasattr(stage, "rank_state_dict")


def unlisted_stages(owner: object, stages: Mapping[str, object | None]) -> list[str]:
    """Names of ``owner``'s attributes that are stateful stages but not among ``stages``' values."""
    listed = {id(stage) for stage in stages.values() if stage is not None}
    return sorted(name for name, value in vars(owner).items() if is_stateful(value) and id(value) not in listed)


class StateRegistry:
    """The stateful stages of one rank, by name (see the module docstring)."""

    def __init__(self, run_state: RunState):
        self.json_stages: dict[str, object] = {"run": run_state}
        self.rank_stages: dict[str, object] = {}

    def register(self, name: str, stage: object) -> None:
        """Keep ``stage`` if it is stateful (JSON or per-rank); a name may be used once."""
        if name in self.json_stages or name in self.rank_stages:
            raise ValueError(f"a stage named {name!r} is registered already")
        if not is_stateful(stage):
            return
        if hasattr(stage, "state_dict"):
            self.json_stages[name] = stage
        if hasattr(stage, "rank_state_dict"):
            self.rank_stages[name] = stage

    def register_stages(self, stages: Mapping[str, object | None]) -> None:
        """``register`` every stage that exists on this rank (None: not on this rank)."""
        for name, stage in stages.items():
            if stage is not None:
                self.register(name, stage)

    def state_dict(self) -> dict:
        """{name: state} of every JSON stage."""
        return {name: stage.state_dict() for name, stage in self.json_stages.items()}

    def rank_state_dict(self) -> dict:
        """{name: state} of every per-rank stage."""
        return {name: stage.rank_state_dict() for name, stage in self.rank_stages.items()}

    def load(self, states: dict, rank_states: dict, *, source: Path) -> None:
        """Restore every registered stage; raises naming each one ``source`` has no state for."""
        missing = [n for n in self.json_stages if n not in states] + [n for n in self.rank_stages if n not in rank_states]
        if missing:
            raise ValueError(f"{source} has no saved state for stage(s) {missing} (a checkpoint of another recipe or an "
                             f"older megatron-elo); resume from a checkpoint of this config or set checkpoint.resume=never")
        for name, stage in self.json_stages.items():
            stage.load_state_dict(states[name])
        for name, stage in self.rank_stages.items():
            stage.load_rank_state_dict(rank_states[name])

    def save(self, trainers: Mapping[str, PolicyTrainer | None], root: Path, *, keep_last: int, is_driver: bool) -> Path:
        """The trainers' shards (``trainers``: by player name, the first one's as the checkpoint's main shards; None:
        a player on another slice of the world, written by its own ranks), the RNG and every stage's state under
        ``root`` (collective)."""
        from megatron_elo.trainer.checkpoint import save_checkpoint

        run_state = self.json_stages["run"]
        first, *others = trainers.items()
        return save_checkpoint(first[1], root, extra=self.state_dict() if is_driver else None, keep_last=keep_last,
                               rank_state=self.rank_state_dict(), step=run_state.step, others=dict(others))

    def resume(self, trainers: Mapping[str, PolicyTrainer | None], checkpoint: Path) -> None:
        """Restore the trainers (as ``save`` got them) and every registered stage from ``checkpoint`` (collective)."""
        from megatron_elo.trainer.checkpoint import load_checkpoint, load_rank_state

        first, *others = trainers.items()
        states = load_checkpoint(first[1], checkpoint, others=dict(others))
        self.load(states, load_rank_state(checkpoint), source=checkpoint)
