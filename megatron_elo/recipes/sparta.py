"""SPARTA (``algorithm.name=sparta``): a tribe of trained players duel, judge each other with
reputation-weighted scores, and all train with DPO on the iteration's pairs (arXiv 2506.04721).

One iteration (one runner step), every rank unless marked:

    batch = the prompt source's next instructions              (driver draws, every rank gets them)
    plan  = a duel per instruction (matchmaking/duels.py)       (driver: first player, reputation-near opponent)
    answers: each player answers its instructions               (its engine, in turn: players/tribe.py)
    panel: every other player scores each answer alone, 1-10    (llm: each judge's engine, its prompts in one
                                                                call; checker: the driver, per-player noise)
    verdicts -> pairs -> reputation update                      (driver: signals/duels.py, elo/reputation.py)
    every player: DPO on all the pairs, then its weight sync    (algorithm.pairs: loss, beta, reference, epochs)

Evaluation: each player's held-out win rate against the eval opponents (a fixed reference), the tribe's
mean as eval/win_rate. Artifacts: reputation_history.csv and reputation.png (R and sigma per player).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from megatron_elo.config.validate_sparta import score_template_path
from megatron_elo.data.source import PromptSource
from megatron_elo.elo.reputation import Reputations
from megatron_elo.evaluation.evaluator import EvalResult, NoEvaluation, build_evaluator
from megatron_elo.flow import Prompt, PromptBatch, Response, StepRecord
from megatron_elo.judges.panel import (
    PanelScores,
    duel_scores,
    fill_score_template,
    noisy_checker_scores,
    parse_panel_score,
)
from megatron_elo.matchmaking.duels import DuelPlan, plan_duels
from megatron_elo.players.tribe import Request, Tribe
from megatron_elo.recipes.games import StepPrompts, timed
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.duels import TribeSignal, duel_pair_rows, judge_duels
from megatron_elo.trainer.step import PolicyTrainer


class ReputationLog:
    """Every player's reputation and sigma after each iteration (checkpointed: the plot spans resumes)."""

    def __init__(self):
        self.rows: list[dict] = []

    def record(self, step: int, reputations: Reputations) -> None:
        """Append iteration ``step``'s ratings and sigmas."""
        self.rows.append({"step": step, **{f"R/{n}": r for n, r in reputations.ratings().items()},
                          **{f"sigma/{n}": s for n, s in reputations.sigmas.items()}})

    def state_dict(self) -> dict:
        """The rows."""
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
        self.rows = [dict(row) for row in state["rows"]]


class TribeEvaluator:
    """Each player's held-out evaluation (the run's ``eval`` against its opponents); eval/win_rate is the mean.
    Every player answers on its own slice; the driver plays all the games (``evaluators``: this rank's players')."""

    def __init__(self, tribe: Tribe, evaluators: dict):
        self.tribe, self.evaluators = tribe, evaluators

    def evaluate(self, step: int) -> EvalResult | None:
        """Every player's result (collective); None when evaluation is off."""
        if any(isinstance(e, NoEvaluation) for e in self.evaluators.values()):
            return None
        answers = self.tribe.gather({name: evaluator.answer() for name, evaluator in self.evaluators.items()})
        games = next(iter(self.evaluators.values()))  # the driver's opponents and judge (the players share the prompts)
        results = self.tribe.world.on_driver(lambda: {name: games.judge_answers(step, answers[name]) for name in self.tribe.names},
                                             waiting_for=f"the driver's evaluation games at step {step}")
        rates = [r.win_rate for r in results.values()]
        return EvalResult(step=step, win_rate=float(np.mean(rates)),
                          ci95=float(np.sqrt(sum(r.ci95 ** 2 for r in results.values())) / len(results)),
                          per_opponent={}, exact=float(np.mean([r.exact for r in results.values()])),
                          per_player={name: r.win_rate for name, r in results.items()})


class SpartaRecipe:
    """The tribe, its reputations and the iteration (see the module docstring)."""

    def __init__(self, ctx: RunContext):
        cfg, world = ctx.cfg, ctx.world
        self.cfg, self.world = cfg, world
        self.tribe = Tribe.build(cfg, world)
        tokenizer = self.tribe.tokenizers[self.tribe.names[0]]
        self.prompts = PromptSource.from_config(cfg, ctx.train_prompts, tokenizer) if world.is_driver else None
        self.step_prompts = StepPrompts(world, self.prompts, cfg.rollout.prompts_per_step)
        self.reputations = Reputations(self.tribe.names) if world.is_driver else None
        self.reputation_log = ReputationLog() if world.is_driver else None
        self.template = score_template_path(cfg).read_text() if cfg.algorithm.sparta.panel == "llm" else None
        self.evaluator = TribeEvaluator(self.tribe, {name: build_evaluator(ctx, p.sampler) for name, p in self.tribe.players.items()})

    @property
    def trainer(self) -> PolicyTrainer | None:
        """The first player's trainer (None on another slice than the first's)."""
        return self.tribe.trainers()[self.tribe.names[0]]

    def trainers(self) -> dict[str, PolicyTrainer | None]:
        """Every player's trainer, in ``players`` order; None for a player on another slice of the world."""
        return self.tribe.trainers()

    def stages(self) -> dict[str, object | None]:
        """The prompt position, the reputations and their log (driver)."""
        return {"prompts": self.prompts, "reputations": self.reputations, "reputation_log": self.reputation_log}

    def ratings(self) -> dict[str, float]:
        """No Elo pool: the reputations are the report's (``report``)."""
        return {}

    def after_resume(self) -> None:
        """Every engine gets its player's restored weights (collective)."""
        self.tribe.sync_all()

    def undo_partial_step(self) -> None:
        """The prompt source back where the failed iteration found it."""
        self.step_prompts.undo()

    # ------------------------------------------------------------ the iteration

    def step(self, step: int) -> StepRecord:
        """One iteration on every rank; the driver's record has the duels' metrics."""
        timings: dict[str, float] = {}
        sparta, world = self.cfg.algorithm.sparta, self.world
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            plan = world.on_driver(lambda: plan_duels(len(batch.prompts), self.reputations, step=step,
                                                      rng=np.random.default_rng([self.cfg.seed, step, 1]),
                                                      first=sparta.first, p_random=sparta.p_random, nearest=sparta.nearest),
                                   waiting_for=f"the driver's duels of iteration {step}")
            answers = self.tribe.answer(batch, plan, step)
        with timed(timings, "judge"):
            panel = self._llm_panel(batch, plan, answers) if sparta.panel == "llm" else None
            signal, panel = world.on_driver(lambda: self._decide(batch, plan, answers, panel, step),
                                            waiting_for=f"the driver's panel verdicts of iteration {step}",
                                            share=lambda decided: (decided[0], None))
        rows = duel_pair_rows(batch, answers, signal.pairs)
        with timed(timings, "train"):
            stats = self.tribe.train(rows, step=step)  # each player's weight sync included
        extra = {f"loss/{name}": float(np.mean([s.loss for s in mine])) for name, mine in stats.items() if mine}
        if world.is_driver:
            extra.update(self._driver_metrics(signal, panel))
        return StepRecord(step=step + 1, train=tuple(s for mine in stats.values() for s in mine),
                          response_tokens=rows.response_tokens, timings=timings, extra_metrics=extra)

    def _llm_panel(self, batch: PromptBatch, plan: DuelPlan, answers: dict[tuple[int, str], Response]) -> PanelScores:
        """Every judge's 1-10 score of each answer of the duels it is not in: its prompts in one greedy call on its
        engine, the slices' judges at the same time (collective). A reply without a score, or a prompt over its
        engine's length, is counted; the judge then scores both answers of that duel 5, as the authors' code does
        (``duel_scores``)."""
        sparta, limit = self.cfg.algorithm.sparta, self.cfg.rollout.engine.max_model_len
        scores: dict[tuple[int, str], dict[str, float]] = {key: {} for key in answers}
        asked, requests, keys_of = {}, {}, {}
        for judge in self.tribe.names:
            tokenizer = self.tribe.tokenizers[judge]
            keys = [(i, name) for i in plan.judging(judge) for name in (plan.duels[i].first, plan.duels[i].second)]
            prompts = [Prompt(prompt_id=f"{batch.prompts[i].prompt_id}/{name}",
                              text=fill_score_template(self.template, question=batch.prompts[i].text, answer=answers[i, name].text))
                       for i, name in keys]
            token_ids = [tokenizer.encode_prompt(p) for p in prompts]
            asked[judge] = [k for k, ids in enumerate(token_ids) if len(ids) + sparta.score_max_new_tokens <= limit]
            settings = SamplingSettings(n=1, max_tokens=sparta.score_max_new_tokens, temperature=0.0,
                                        stop_token_ids=(tokenizer.eos_id,))
            requests[judge] = Request([prompts[k] for k in asked[judge]], [token_ids[k] for k in asked[judge]], settings)
            keys_of[judge] = keys
        replies = self.tribe.generate_each(requests)
        parsed = unparsed = overlong = 0
        for judge, keys in keys_of.items():
            read = {k: parse_panel_score(reply.text) for k, reply in zip(asked[judge], replies[judge], strict=True)}
            overlong += len(keys) - len(asked[judge])
            unparsed += sum(score is None for score in read.values())
            parsed += sum(score is not None for score in read.values())
            for k in range(0, len(keys), 2):  # the two answers of one duel
                both = duel_scores(read.get(k), read.get(k + 1))
                scores[keys[k]][judge], scores[keys[k + 1]][judge] = both
        return PanelScores(scores=scores, parsed=parsed, unparsed=unparsed, overlong=overlong)

    def _checker_panel(self, batch: PromptBatch, plan: DuelPlan, answers: dict[tuple[int, str], Response],
                       step: int) -> PanelScores:
        """The driver's checker panel: each non-duelling player's noisy checker score of each answer."""
        rng = np.random.default_rng([self.cfg.seed, step, 3])
        noise = {p.name: p.judge_noise for p in self.cfg.players}
        scores = {}
        for duel in plan.duels:
            judges = {name: p for name, p in noise.items() if name not in (duel.first, duel.second)}
            for name in (duel.first, duel.second):
                prompt = batch.prompts[duel.prompt_index]
                scores[duel.prompt_index, name] = noisy_checker_scores(judges, answers[duel.prompt_index, name].text,
                                                                       prompt.reference, rng)
        return PanelScores(scores=scores)

    def _decide(self, batch: PromptBatch, plan: DuelPlan, answers: dict[tuple[int, str], Response],
                panel: PanelScores | None, step: int) -> tuple[TribeSignal, PanelScores]:
        """The driver's verdicts at the current reputations (``panel`` None: the checker panel scores now), then
        the reputation update and its log."""
        if panel is None:
            panel = self._checker_panel(batch, plan, answers, step)
        signal = judge_duels(batch, plan, answers, panel, self.reputations, weighting=self.cfg.algorithm.sparta.weighting)
        self.reputations.record(signal.duels)
        self.reputation_log.record(step + 1, self.reputations)
        return signal, panel

    def _driver_metrics(self, signal: TribeSignal, panel: PanelScores) -> dict[str, float]:
        metrics = {**signal.metrics(), "panel/parsed": float(panel.parsed),
                   "panel/unparsed": float(panel.unparsed), "panel/overlong": float(panel.overlong),
                   **self.prompts.metrics()}
        metrics.update({f"reputation/{n}": r for n, r in self.reputations.ratings().items()})
        metrics.update({f"reputation_sigma/{n}": s for n, s in self.reputations.sigmas.items()})
        return metrics

    # ------------------------------------------------------------ the report

    def report(self, out: Path) -> dict:
        """reputation_history.csv and reputation.png under ``out`` (driver); the final reputations and sigmas."""
        rows = self.reputation_log.rows
        with open(out / "reputation_history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *[f"R/{n}" for n in self.tribe.names],
                                                   *[f"sigma/{n}" for n in self.tribe.names]])
            writer.writeheader()
            writer.writerows(rows)
        plot_reputations(out / "reputation.png", rows, self.tribe.names)
        return {"reputation": self.reputations.ratings(), "reputation_sigma": dict(self.reputations.sigmas)}


def plot_reputations(path: Path, rows: list[dict], names: list[str]) -> None:
    """Each player's reputation over the iterations (its sigma below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[3, 1])
    steps = [row["step"] for row in rows]
    for name in names:
        top.plot(steps, [row[f"R/{name}"] for row in rows], label=name)
        bottom.plot(steps, [row[f"sigma/{name}"] for row in rows], label=name)
    top.set_ylabel("reputation R")
    top.set_title("SPARTA: reputations over iterations")
    bottom.set_ylabel("sigma")
    bottom.set_xlabel("iteration")
    if names:
        top.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(ctx: RunContext) -> SpartaRecipe:
    """The tribe from ``players``, reputations at 100 / sigma 0.5."""
    return SpartaRecipe(ctx)
