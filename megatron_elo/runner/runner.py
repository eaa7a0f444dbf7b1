"""``megatron-elo train`` and ``megatron-elo eval``: the runner around a recipe.

    summary = Runner(cfg).run()                        # every rank of the world calls it
    result = evaluate_checkpoint(cfg, "runs/x/checkpoints/step_00000400")

The runner owns the cadence (steps, evaluation before the first step / every ``eval.every_steps`` /
after the last, checkpoints every ``checkpoint.every_steps`` and at the end, metrics every
``tracking.log_every``), the registry of stateful stages (``state.py``), tracking and the reports; the
recipe (``recipes/``, named by ``algorithm.name``) owns what one step does. One process, or a torchrun
world of trainer TP x PP x DP ranks with the policy's engine colocated; rank 0, the driver, also
plays the games, logs and writes artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from megatron_elo.config.loader import config_to_dict, dump_yaml, flatten
from megatron_elo.config.schema import RunConfig
from megatron_elo.evaluation.evaluator import EvalResult, build_evaluator
from megatron_elo.flow import StepRecord
from megatron_elo.parallel.world import DriverFailed, World
from megatron_elo.players.prepare import prepare_players
from megatron_elo.recipes import Recipe, build_recipe
from megatron_elo.runner.context import RunContext
from megatron_elo.runner.errors import EngineStopped
from megatron_elo.runner.report import export_final, step_metrics, step_trace, write_artifacts
from megatron_elo.runner.state import RunState, StateRegistry, unlisted_stages
from megatron_elo.tracking import Tracker, make_tracker
from megatron_elo.utils.logging import get_logger, progress_bar, send_engine_logs_to

log = get_logger(__name__)


class Runner:
    """One training run (see the module docstring). ``stop_after``: stop as if killed after this many
    steps of this process (tests of resumption)."""

    def __init__(self, cfg: RunConfig, *, stop_after: int | None = None):
        self.cfg, self.stop_after = cfg, stop_after
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        self.run_state = RunState()
        self.registry = StateRegistry(self.run_state)
        self.recipe: Recipe | None = None  # built in run(), on every rank
        self.last_record: StepRecord | None = None

    def run(self) -> dict:
        """Prepare, build the recipe, resume if a checkpoint exists, train, evaluate, export; returns the
        driver's summary (other ranks: {"finished", "step", "rank"})."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        world = World.join(device=cfg.cluster.device, timeout_minutes=cfg.cluster.timeout_minutes)
        send_engine_logs_to(self.run_dir / "engine_logs" / f"in_process_rank{world.rank}.log")
        prepare_players(cfg, world)
        if world.is_driver:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "resolved_config.yaml").write_text(dump_yaml(cfg))
        ctx = RunContext(cfg, world)
        try:
            self.recipe = build_recipe(ctx)
            stages = self.recipe.stages()
            unlisted = unlisted_stages(self.recipe, stages)
            if unlisted:
                raise RuntimeError(f"recipe {cfg.algorithm.name!r} holds stateful stage(s) {unlisted} that its stages() "
                                   f"does not list: checkpoints would lose them; add them to stages()")
            self.registry.register_stages(stages)
            resumed = self._resume(world)
            tracker = make_tracker(cfg.tracking, rank=world.rank, output_dir=cfg.output_dir, run_name=cfg.run_name,
                                   run_id=self.run_state.mlflow_run_id)
            self.run_state.mlflow_run_id = tracker.run_id
            try:
                summary = self._train(world, tracker, resumed)
            except BaseException:
                tracker.finish("FAILED")
                raise
            tracker.finish("FINISHED" if summary["finished"] else "KILLED")
            return summary
        finally:
            ctx.close()

    def _resume(self, world: World) -> bool:
        """Restore the checkpoint ``checkpoint.resume`` names (auto: the newest sound one; corrupt newer
        ones are skipped with a warning naming the file), chosen by the driver; False when there is none."""
        setting = self.cfg.checkpoint.resume
        if setting == "never":
            return False
        chosen = self._checkpoint_to_resume(setting) if world.is_driver else None
        chosen = world.from_driver(chosen, waiting_for="the driver to check the checkpoints")
        if isinstance(chosen, list):  # an explicit checkpoint that failed its checks: every rank stops
            raise ValueError(f"checkpoint.resume={setting}: {'; '.join(chosen)}; point it at a sound checkpoint "
                             f"(or use auto, which falls back to the newest sound one)")
        if chosen is None:
            return False
        self.registry.resume(self.recipe.trainers(), Path(chosen))
        log.info("resumed from %s at step %d", chosen, self.run_state.step)
        return True

    def _checkpoint_to_resume(self, setting: str) -> str | list[str] | None:
        """The driver's choice: a checkpoint path, None (nothing to resume), or the problems of an explicit one."""
        from megatron_elo.trainer.checkpoint import checkpoint_problems, latest_valid_checkpoint

        if setting != "auto":
            problems = checkpoint_problems(setting)
            return problems or str(setting)
        latest, skipped = latest_valid_checkpoint(self.run_dir / "checkpoints")
        for line in skipped:
            log.warning("%s", line)
        return str(latest) if latest is not None else None

    def _train(self, world: World, tracker: Tracker, resumed: bool) -> dict:
        cfg, recipe, state = self.cfg, self.recipe, self.run_state
        if not resumed:
            tracker.log_params(flatten(config_to_dict(cfg)))
        else:
            recipe.after_resume()
        if not state.evals:
            self._log_eval(recipe.evaluator.evaluate(state.step), tracker, world)
        start, steps_here = state.step, 0
        with progress_bar(total=cfg.trainer.steps, description=cfg.algorithm.name, enabled=world.is_driver) as bar:
            bar.advance(start)
            for step in range(start, cfg.trainer.steps):
                if self.stop_after is not None and steps_here >= self.stop_after:
                    return {"finished": False, "step": step}
                clock = time.perf_counter()
                with self._stop_cleanly_if_an_engine_dies(world):
                    record = recipe.step(step)
                seconds = time.perf_counter() - clock
                state.step, steps_here = step + 1, steps_here + 1
                if world.is_driver:
                    self._log_step(record, seconds, tracker, bar)
                if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < cfg.trainer.steps:
                    self._log_eval(recipe.evaluator.evaluate(state.step), tracker, world)
                if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                    self._save(world)
        final = recipe.evaluator.evaluate(state.step)
        self._log_eval(final, tracker, world)
        self._save(world)
        if not world.is_driver:
            return {"finished": True, "step": state.step, "rank": world.rank}
        return self._finish(final, tracker)

    @contextlib.contextmanager
    def _stop_cleanly_if_an_engine_dies(self, world: World):
        """A served engine that died for good (``EngineDown`` on the driver, ``DriverFailed`` of that kind
        elsewhere) during a step: checkpoint the last completed step (every rank; the step's games come
        before its update, so nothing of it is in the state yet) and stop with ``EngineStopped``, so that
        the same command resumes. With overlap_judging the previous update ran meanwhile: the last
        periodic checkpoint is what resumes."""
        from megatron_elo.rollout.served import EngineDown

        try:
            yield
        except (EngineDown, DriverFailed) as err:
            if isinstance(err, DriverFailed) and err.kind != "EngineDown":
                raise
            saved = not self.cfg.rollout.overlap_judging
            if saved:
                self.recipe.undo_partial_step()
                self._save(world)
            where = f"a checkpoint of step {self.run_state.step} was written" if saved else \
                "rollout.overlap_judging: resuming from the last periodic checkpoint"
            raise EngineStopped(f"{err} -- {where}; fix the engine, then run the same command to resume") from err

    def _log_step(self, record: StepRecord, seconds: float, tracker: Tracker, bar) -> None:
        """The driver's bookkeeping of one step (``seconds``: its wall-clock time): ratings history,
        metrics, the progress bar."""
        self.last_record = record
        if record.ratings:
            self.run_state.elo_history.append({"step": record.step, **record.ratings})
        trace = step_trace(record)
        if trace is not None:
            self.run_state.trace.append(trace)
        metrics = step_metrics(record, seconds=seconds)
        if record.step % self.cfg.tracking.log_every == 0:
            tracker.log_metrics(metrics, step=record.step)
        bar.advance()
        bar.update(**{name: metrics[key] for name, key in (("reward", "reward_mean"), ("elo", "elo/policy")) if key in metrics})

    def _log_eval(self, result: EvalResult | None, tracker: Tracker, world: World) -> None:
        if result is None:  # eval.num_prompts=0
            return
        self.run_state.evals.append(dataclasses.asdict(result))
        metrics = {"eval/win_rate": result.win_rate, "eval/win_rate_ci95": result.ci95, "eval/exact": result.exact}
        metrics.update({f"eval/win_rate/{k}": v for k, v in result.per_opponent.items()})
        metrics.update({f"eval/{name}/win_rate": v for name, v in result.per_player.items()})
        tracker.log_metrics(metrics, step=result.step)
        if world.is_driver:
            log.info("eval at step %d: %s win rate %.3f +- %.3f (exact %.2f) %s", result.step, self.cfg.eval.split.replace("_", "-"),
                     result.win_rate, result.ci95, result.exact,
                     {k: round(v, 3) for k, v in {**result.per_opponent, **result.per_player}.items()})

    def _save(self, world: World) -> None:
        self.registry.save(self.recipe.trainers(), self.run_dir / "checkpoints", keep_last=self.cfg.checkpoint.keep_last,
                           is_driver=world.is_driver)

    def _finish(self, final: EvalResult | None, tracker: Tracker) -> dict:
        """Artifacts, the HF export and the summary (driver; the win rates are None without evaluation)."""
        ratings = self.recipe.ratings()
        (self.run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        reported = self.recipe.report(self.run_dir / "artifacts")  # written before the artifacts are logged
        write_artifacts(self.cfg, self.run_dir, rated=list(ratings), elo_history=self.run_state.elo_history,
                        evals=self.run_state.evals, last=self.last_record, tracker=tracker)
        export = export_final(self.cfg, self.run_dir, tracker)
        first = self.run_state.evals[0] if self.run_state.evals else {"win_rate": None, "exact": None}
        final = final or EvalResult(step=self.run_state.step, win_rate=None, ci95=None, per_opponent={}, exact=None)
        summary = {"finished": True, "step": self.run_state.step, "win_rate_before": first["win_rate"],
                   "win_rate_after": final.win_rate, "ci95_after": final.ci95, "exact_before": first["exact"],
                   "exact_after": final.exact, "elo": ratings, "mlflow": tracker.location,
                   "export": str(export) if export else None, "run_dir": str(self.run_dir), "eval_split": self.cfg.eval.split,
                   "evals": self.run_state.evals, "elo_history": self.run_state.elo_history, "trace": self.run_state.trace,
                   **reported}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def evaluate_checkpoint(cfg: RunConfig, checkpoint: str | Path | None = None) -> EvalResult:
    """Held-out win rate of a training checkpoint (default: the run's newest), or of cfg.model when the
    run has none, with the evaluation stage ``train`` uses. Nothing is trained or written but the
    checkpoint's HF export (<run>/export_hf/<step>, reused when there). In one process the policy's
    engine runs one replica whatever rollout.engine.dp says (results do not depend on the layout); under
    torchrun it is sharded as in training."""
    from megatron_elo.data.tokenizer import player_tokenizer
    from megatron_elo.players.sampler import PolicySampler
    from megatron_elo.rollout.engine import RolloutEngine
    from megatron_elo.trainer.checkpoint import latest_valid_checkpoint

    world = World.join(device=cfg.cluster.device, timeout_minutes=cfg.cluster.timeout_minutes)
    send_engine_logs_to(Path(cfg.output_dir) / cfg.run_name / "engine_logs" / f"eval_rank{world.rank}.log")
    prepare_players(cfg, world)
    if checkpoint is None:
        path, skipped = latest_valid_checkpoint(Path(cfg.output_dir) / cfg.run_name / "checkpoints")
        for line in skipped if world.is_driver else []:
            log.warning("%s", line)
    else:
        path = Path(checkpoint)
    model_dir, step = cfg.model.path, 0
    if path is not None:
        model_dir, step = exported_checkpoint(path, world), int(json.loads((path / "meta.json").read_text())["step"])
    engine_config = cfg.rollout.engine if world.size > 1 else replace(cfg.rollout.engine, dp=1)
    engine = RolloutEngine(model_dir, engine_config, seed=cfg.seed, dtype=cfg.model.dtype, distributed=world.size > 1)
    ctx = RunContext(cfg, world)
    try:
        sampler = PolicySampler(engine, world=world, tokenizer=player_tokenizer(cfg.data, cfg.model))
        return build_evaluator(ctx, sampler).evaluate(step)
    finally:
        ctx.close()


def exported_checkpoint(checkpoint: Path, world: World | None = None) -> str:
    """The HF export of a training checkpoint (<run>/export_hf/<step>, made by the driver when missing),
    on every rank of ``world`` (None: this process alone)."""
    from megatron_elo.models.convert import megatron_dir_to_hf

    checkpoint = Path(checkpoint)
    if not (checkpoint / "meta.json").is_file():
        raise ValueError(f"--checkpoint {checkpoint}: not a complete checkpoint (no meta.json); pick a step_* directory "
                         f"under <output_dir>/<run_name>/checkpoints")
    target = checkpoint.parent.parent / "export_hf" / checkpoint.name
    if (world is None or world.is_driver) and not (target / "config.json").is_file():
        megatron_dir_to_hf(checkpoint, target)
    if world is not None:
        world.barrier(f"the driver to export {checkpoint} to HF")
    return str(target)
