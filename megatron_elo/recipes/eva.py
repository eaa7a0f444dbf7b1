"""eva (``algorithm.name=eva``, arXiv 2411.00062): a creator evolves the prompts the solver learns most from.
Each step is one iteration:

    batch = evolved_share from the evolved buffer (while it has them), the rest original   (data/evolving.py)
    the solver samples n per prompt                          (every rank, the colocated engine)
    rewards: each answer graded alone (scorer=absolute: the judge's grade or algorithm.reward_model), or each
    against an opponent drawn from the Elo pool (scorer=opponents: win 1 / loss 0, the ratings update)
    pairs: best vs worst per prompt (algorithm.pairs.rule); the pair update; weights to the engine
    informativeness of every prompt -> evolve_fraction of them drawn -> the creator's rewrites -> the buffer

The creator is the arithmetic task's programmatic one (harder variants with their references) or an
opponent's engine rewriting from the templates. Evolved prompts, with their parents' ids, are in every
checkpoint and written to ``artifacts/evolved_prompts.jsonl`` at the end, with the informativeness and
solve rates per step (``eva_history.csv``, ``eva.png``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from megatron_elo.config.validate_self_improve import eva_templates
from megatron_elo.data.evolving import ArithmeticCreator, EvolvingPrompts, TemplateCreator
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import PairSignal, Played, PromptBatch, Response, StepRecord
from megatron_elo.matchmaking.matchmakers import AbsoluteMatchmaker, EloMatchmaker
from megatron_elo.recipes.pairs_online import PairsOnlineRecipe
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.outcomes import outcome_matrix
from megatron_elo.signals.pairs import pairs_from_rewards

HISTORY = ("eva/informativeness_mean", "eva/informativeness_p50", "eva/informativeness_max", "eva/evolved_prompts",
           "eva/evolved_solve_rate", "eva/original_solve_rate", "eva/buffer")


class EvaLog:
    """The per-step eva metrics kept for the report (a stage: checkpointed)."""

    def __init__(self):
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        """Every step's row (JSON)."""
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
        self.rows = list(state["rows"])


class EvaRecipe(PairsOnlineRecipe):
    """See the module docstring."""

    def __init__(self, ctx: RunContext, **stages):
        super().__init__(ctx, **stages)
        self.log = EvaLog() if self.world.is_driver else None

    def build_prompt_source(self, ctx: RunContext) -> EvolvingPrompts:
        """The data set's prompts wrapped with the creator's evolved ones (driver)."""
        eva = ctx.cfg.algorithm.eva
        creator = ArithmeticCreator() if eva.creator == "programmatic" else TemplateCreator(
            ctx.opponents(), eva.creator, eva_templates(ctx.cfg))
        return EvolvingPrompts(super().build_prompt_source(ctx), creator, eva, seed=ctx.cfg.seed)

    def stages(self) -> dict[str, object | None]:
        """PairsOnlineRecipe's, the prompts being the evolving source, and the eva log."""
        return {**super().stages(), "eva_log": self.log}

    def step(self, step: int) -> StepRecord:
        """PairsOnlineRecipe's iteration; the driver keeps its eva metrics for the report once it has trained."""
        record = super().step(step)
        if self.log is not None:
            self.log.rows.append({"step": record.step, **{k: record.extra_metrics.get(k, float("nan")) for k in HISTORY}})
        return record

    def _play_pairs(self, batch: PromptBatch, rollouts: list[list[Response]], step: int,
                    timings: dict[str, float]) -> tuple[Played, PairSignal, dict[str, float]]:
        """The driver's games (graded alone, or against the pool), the pairs, the creator's rewrites of the
        most informative prompts."""
        played = self.play(batch, rollouts, step, timings)
        rewards, valid = outcome_matrix(played.outcomes, [p.prompt_id for p in batch.prompts], self.cfg.rollout.n_per_prompt)
        metrics = {"reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
                   **self.prompts.solve_rates(batch, [[r.text for r in group] for group in rollouts]),
                   **self.prompts.observe(batch, rewards, valid, step)}
        return played, pairs_from_rewards(rewards, valid, rule=self.cfg.algorithm.pairs.rule), metrics

    def report(self, out: Path) -> dict:
        """evolved_prompts.jsonl, eva_history.csv and eva.png under ``out`` (driver); the evolved prompt count."""
        self.prompts.write(out / "evolved_prompts.jsonl")
        with open(out / "eva_history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *HISTORY])
            writer.writeheader()
            writer.writerows(self.log.rows)
        plot_eva(out / "eva.png", self.log.rows)
        return {"evolved_prompts": len(self.prompts.created)}


def plot_eva(path: Path, rows: list[dict]) -> None:
    """Informativeness (mean, median, max) and the solve rates of evolved and original prompts over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [row["step"] for row in rows]
    for key in ("eva/informativeness_mean", "eva/informativeness_p50", "eva/informativeness_max"):
        left.plot(steps, [row[key] for row in rows], label=key.split("_")[-1])
    left.set_xlabel("step")
    left.set_ylabel("informativeness")
    left.legend()
    for key in ("eva/evolved_solve_rate", "eva/original_solve_rate"):
        right.plot(steps, [row[key] for row in rows], label=key.split("/")[1].replace("_solve_rate", ""))
    right.set_xlabel("step")
    right.set_ylabel("solve rate of the solver's samples")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(ctx: RunContext) -> EvaRecipe:
    """The pool; games against it (scorer=opponents: the Elo-orchestrated matchmaker) or answers graded alone."""
    cfg = ctx.cfg
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    matchmaker = (EloMatchmaker(pool, cfg.algorithm.elo, total_steps=cfg.trainer.steps, samples=cfg.rollout.n_per_prompt)
                  if cfg.algorithm.eva.scorer == "opponents" else AbsoluteMatchmaker(samples=cfg.rollout.n_per_prompt))
    return EvaRecipe(ctx, pool=pool, matchmaker=matchmaker)
