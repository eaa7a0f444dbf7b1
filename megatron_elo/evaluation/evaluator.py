"""The held-out win rate of a trained player against the eval opponents.

    evaluator = build_evaluator(ctx, sampler)          # the same builder for `train` and `megatron-elo eval`
    result = evaluator.evaluate(step)                  # EvalResult on every rank (collective)

Greedy against greedy answers (``eval.temperature`` 0), or ``eval.samples_per_prompt`` samples at
``eval.temperature`` against one sampled answer per opponent; seeded by ``eval.seed`` alike at every
evaluation and in every run, so evaluations differ only by the weights. Every rank generates its share
on the player's engine; the driver gets the opponents' answers and judges (the task's exact checker
when answers are checkable, else the LLM judge; a game without a valid verdict is left out of the
rates, and the judge counts it); every rank gets the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from megatron_elo.config.schema import EvalConfig
from megatron_elo.data.source import fit_prompt
from megatron_elo.flow import POLICY, SCORE_OF_WINNER, Game, Prompt, Response
from megatron_elo.judges.base import Judge
from megatron_elo.parallel.world import World
from megatron_elo.players.frozen import FrozenPlayers
from megatron_elo.players.sampler import PolicySampler
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.utils.seeds import stable_seed

if TYPE_CHECKING:
    from megatron_elo.runner.context import RunContext


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Held-out win rate of the policy against each eval opponent, noise-free judge."""

    step: int
    win_rate: float
    ci95: float  # half-width of the normal-approximation 95% interval
    per_opponent: dict[str, float]
    exact: float  # fraction of the policy's held-out answers that are exact
    per_player: dict[str, float] = field(default_factory=dict)  # several trained players (SPARTA): each one's win rate


def win_rate_interval(wins: float, games: int) -> tuple[float, float]:
    """(win rate, half-width of its 95% interval): ties count half; normal approximation."""
    if games == 0:
        return float("nan"), float("nan")
    p = wins / games
    return p, 1.96 * math.sqrt(max(p * (1 - p), 0.0) / games)


class Evaluator:
    """Plays the held-out games of one trained player (see the module docstring)."""

    def __init__(self, *, config: EvalConfig, prompts: Sequence[Prompt], sampler: PolicySampler, world: World,
                 opponents: FrozenPlayers | None, judge: Judge | None, opponent_names: Sequence[str], max_new_tokens: int,
                 max_prompt_tokens: int | None = None, overlong: str = "drop"):
        """max_prompt_tokens / overlong: held-out prompts over the limit are left out, cut or refused, as
        training prompts are (``data.source.fit_prompt``); decided once, so every evaluation plays the same games."""
        self.config, self.sampler, self.world = config, sampler, world
        self.opponents, self.judge = opponents, judge  # the driver's; None on the other ranks
        self.opponent_names, self.max_new_tokens = list(opponent_names), max_new_tokens
        self.prompts, self.token_ids = [], []
        for prompt in prompts:
            ids = tuple(sampler.tokenizer.encode_prompt(prompt))
            fitted = ids if max_prompt_tokens is None else fit_prompt(prompt, ids, max_tokens=max_prompt_tokens,
                                                                        overlong=overlong)
            if fitted is not None:
                self.prompts.append(prompt)
                self.token_ids.append(fitted)
        if not self.prompts:
            raise ValueError(f"every held-out prompt is over rollout.max_prompt_tokens={max_prompt_tokens}; raise it")

    def sampling_settings(self) -> SamplingSettings:
        """How the player answers the held-out prompts: eval.samples_per_prompt at eval.temperature, seeded by eval.seed."""
        return SamplingSettings(n=self.config.samples_per_prompt, max_tokens=self.max_new_tokens,
                                temperature=self.config.temperature, seed=stable_seed(self.config.seed, "eval"),
                                stop_token_ids=(self.sampler.tokenizer.eos_id,))

    def evaluate(self, step: int) -> EvalResult:
        """The player's answers on every rank, the driver's games, the result on every rank."""
        answers = self.answer()
        return self.world.on_driver(lambda: self.judge_answers(step, answers),
                                    waiting_for=f"the driver's evaluation games at step {step}")

    def answer(self) -> list[list[Response]]:
        """[prompts][samples] the player's held-out answers, on every rank of its world (collective)."""
        return self.sampler.respond(self.prompts, self.token_ids, self.sampling_settings(), player=POLICY)

    def judge_answers(self, step: int, policy: list[list[Response]]) -> EvalResult:
        """The driver's games: policy: [prompts][samples] answers -> win rate over every (prompt, sample,
        opponent) game."""
        greedy = self.config.temperature == 0
        requests = {name: self.prompts for name in self.opponent_names}
        # a seed of evaluation's own: never the answers the policy trained against, whatever eval.seed is
        answers = dict(self.opponents.answers_as_completed(requests, greedy=greedy,
                                                           seed=stable_seed(self.config.seed, "eval", "opponents")))
        total_wins, total_games, per_opponent = 0.0, 0, {}
        rng = np.random.default_rng(0)
        for name in self.opponent_names:
            theirs = answers[name]
            games = [Game(game_id=len(group) * i + j, prompt=p, policy=r, opponent=theirs[p.prompt_id])
                     for i, (p, group) in enumerate(zip(self.prompts, policy, strict=True)) for j, r in enumerate(group)]
            decided = [v for v in self.judge.judge(games, rng) if v.valid and v.winner is not None]  # invalid: dropped
            wins = sum(SCORE_OF_WINNER[v.winner] for v in decided)
            per_opponent[name] = wins / len(decided) if decided else float("nan")
            total_wins, total_games = total_wins + wins, total_games + len(decided)
        rate, half = win_rate_interval(total_wins, total_games)
        checkable = [(p, r) for p, group in zip(self.prompts, policy, strict=True) for r in group if p.reference is not None]
        exact = float(np.mean([r.text.strip() == p.reference for p, r in checkable])) if checkable else float("nan")
        return EvalResult(step=step, win_rate=rate, ci95=half, per_opponent=per_opponent, exact=exact)


class NoEvaluation:
    """``eval.num_prompts=0``: nothing is evaluated (the runner records no result)."""

    def evaluate(self, step: int) -> None:
        """No result."""
        return None


def build_evaluator(ctx: RunContext, sampler: PolicySampler | None) -> Evaluator | NoEvaluation:
    """The run's evaluation of the player behind ``sampler`` (``eval`` config, held-out prompts, the
    driver's opponents and eval judge): what ``train`` and ``megatron-elo eval`` both use; none with
    ``eval.num_prompts=0``; ``eval.benchmark``: that benchmark of the harness (``benchmark.py``); evolve: direct
    and refined answers (``refined.py``)."""
    cfg = ctx.cfg
    if cfg.eval.num_prompts == 0:
        return NoEvaluation()
    if cfg.eval.benchmark is not None:
        from megatron_elo.evaluation.benchmark import BenchmarkEvaluator

        return BenchmarkEvaluator.from_context(ctx, sampler)
    arguments = dict(config=cfg.eval, prompts=ctx.held_out_prompts, sampler=sampler, world=ctx.world,
                     opponents=ctx.opponents(), judge=ctx.eval_judge(),
                     opponent_names=cfg.eval.opponents or [o.name for o in cfg.opponents],
                     max_new_tokens=cfg.rollout.max_new_tokens, max_prompt_tokens=cfg.rollout.max_prompt_tokens,
                     overlong=cfg.rollout.overlong_prompt)
    if cfg.algorithm.name == "evolve":  # direct and refined answers
        from megatron_elo.config.validate_self_improve import refine_template_path
        from megatron_elo.data.refine import Refiner
        from megatron_elo.evaluation.refined import RefiningEvaluator

        refiner = Refiner(refine_template_path(cfg).read_text(), sampler.tokenizer, max_tokens=cfg.rollout.max_prompt_tokens)
        return RefiningEvaluator(refiner=refiner, chain=cfg.algorithm.evolve.chain, **arguments)
    return Evaluator(**arguments)
