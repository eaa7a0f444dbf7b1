"""The algorithm interface: who plays whom, how verdicts become rewards, how ratings move.

Per step the loop calls, in order:

    plan = algo.plan_opponents(prompts, step=step, rng=rng)       # an opponent (or None) per prompt
    ...  policy samples n answers per prompt; each planned opponent answers (engine or cache)
    games = algo.make_games(prompts, policy_samples, opponent_answers, plan)
    ...  the judge returns one Verdict per game
    outcomes = algo.outcomes(games, verdicts)                     # one reward per policy sample
    deltas = algo.update_ratings(outcomes)                        # Elo, after the train step

Methods to come plug in here without changing the loop: several trained players (SPARTA) plan
games between policies and turn outcomes into preference pairs; a prompt creator (eva) rewrites
``prompts`` before planning; DPO-family losses consume pairs built from the same outcomes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from megatron_elo.config.schema import AlgorithmConfig
from megatron_elo.elo.pool import EloPool
from megatron_elo.elo.ratings import GameResult
from megatron_elo.flow import POLICY, SCORE_OF_WINNER, Game, Outcome, Prompt, Response, Verdict


@dataclass(frozen=True, kw_only=True)
class OpponentPlan:
    """Which opponent each prompt is played against in one step."""

    opponents: list[str | None]  # aligned with the step's prompts; None: point-wise (no opponent)
    probabilities: dict[str, float]  # the distribution drawn from (logged); {} when not sampled
    temperature: float | None = None  # selection temperature used, when sampled


class Algorithm(ABC):
    """A training method. Subclasses set ``name`` and implement ``plan_opponents``."""

    name: ClassVar[str]

    def __init__(self, config: AlgorithmConfig, pool: EloPool, *, total_steps: int):
        self.config = config
        self.pool = pool
        self.total_steps = total_steps

    @abstractmethod
    def plan_opponents(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> OpponentPlan:
        """Choose an opponent (or None) for each prompt of this step."""

    def make_games(self, prompts: Sequence[Prompt], policy_samples: Sequence[Sequence[Response]],
                   opponent_answers: Mapping[tuple[str, str], Response], plan: OpponentPlan) -> list[Game]:
        """One game per policy sample: ``policy_samples[i]`` are prompt i's n answers; the opponent's
        answer is ``opponent_answers[(prompt_id, opponent)]``. Game ids run 0..P*n-1 in order."""
        if not len(prompts) == len(policy_samples) == len(plan.opponents):
            raise ValueError(f"prompts ({len(prompts)}), policy sample groups ({len(policy_samples)}) and planned "
                             f"opponents ({len(plan.opponents)}) must have the same length")
        games = []
        for prompt, samples, opponent in zip(prompts, policy_samples, plan.opponents, strict=True):
            answer = None
            if opponent is not None:
                key = (prompt.prompt_id, opponent)
                if key not in opponent_answers:
                    raise KeyError(f"no answer from opponent {opponent!r} to prompt {prompt.prompt_id!r}")
                answer = opponent_answers[key]
            for sample in samples:
                if sample.prompt_id != prompt.prompt_id:
                    raise ValueError(f"policy sample for prompt {sample.prompt_id!r} is grouped under {prompt.prompt_id!r}")
                games.append(Game(game_id=len(games), prompt=prompt, policy=sample, opponent=answer))
        return games

    def outcomes(self, games: Sequence[Game], verdicts: Sequence[Verdict]) -> list[Outcome]:
        """One Outcome per game: pairwise win 1, loss 0, tie ``config.tie_reward``; invalid -> dropped."""
        by_game = _verdicts_by_game(games, verdicts)
        return [self._outcome(game, by_game[game.game_id]) for game in games]

    def _outcome(self, game: Game, verdict: Verdict) -> Outcome:
        common = dict(game_id=game.game_id, prompt_id=game.prompt.prompt_id, sample_index=game.policy.sample_index,
                      opponent=game.opponent_name)
        if not verdict.valid or verdict.winner is None:
            return Outcome(**common, reward=0.0, valid=False)
        reward = {"policy": 1.0, "opponent": 0.0, "tie": self.config.tie_reward}[verdict.winner]
        return Outcome(**common, reward=reward, valid=True, winner=verdict.winner)

    def update_ratings(self, outcomes: Sequence[Outcome]) -> dict[str, float]:
        """Rate this step's valid pairwise games as one batch; returns the rating deltas."""
        games = [GameResult(player_a=POLICY, player_b=o.opponent, score_a=SCORE_OF_WINNER[o.winner])
                 for o in outcomes if o.valid and o.opponent is not None and o.winner is not None]
        return self.pool.record(games) if games else {}


def _verdicts_by_game(games: Sequence[Game], verdicts: Sequence[Verdict]) -> dict[int, Verdict]:
    by_game = {v.game_id: v for v in verdicts}
    expected = {g.game_id for g in games}
    if set(by_game) != expected or len(by_game) != len(verdicts):
        missing, extra = sorted(expected - set(by_game)), sorted(set(by_game) - expected)
        raise ValueError(f"need exactly one verdict per game: missing {missing[:10]}, unexpected {extra[:10]}, "
                         f"{len(verdicts) - len(by_game)} duplicate(s)")
    return by_game


def outcome_matrix(outcomes: Sequence[Outcome], prompt_ids: Sequence[str], n_per_prompt: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and validity laid out per prompt group: two arrays of shape [P, n] (float64, bool)."""
    row = {pid: i for i, pid in enumerate(prompt_ids)}
    rewards = np.zeros((len(prompt_ids), n_per_prompt))
    valid = np.zeros((len(prompt_ids), n_per_prompt), dtype=bool)
    for o in outcomes:
        rewards[row[o.prompt_id], o.sample_index] = o.reward
        valid[row[o.prompt_id], o.sample_index] = o.valid
    return rewards, valid


def groups_without_signal(rewards: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Which prompt groups give the policy no gradient: [P, n] rewards and validity -> [P] bool, True
    where the group's valid rewards are all equal or fewer than two are valid, so every group-normalised
    advantage of that prompt is 0 (e.g. all 8 samples beat the opponent)."""
    if rewards.shape != valid.shape or rewards.ndim != 2:
        raise ValueError(f"rewards {rewards.shape} and valid {valid.shape} must both be [P, n]")
    highest = np.where(valid, rewards, -np.inf).max(axis=1)
    lowest = np.where(valid, rewards, np.inf).min(axis=1)
    return (valid.sum(axis=1) < 2) | (highest == lowest)


def no_signal_rates(rewards: np.ndarray, valid: np.ndarray, opponents: Sequence[str | None]) -> tuple[float, dict[str, float]]:
    """The fraction of prompt groups without signal (``groups_without_signal``) over all P prompts, and
    per opponent over the prompts played against it (``opponents``: [P], None for point-wise prompts)."""
    no_signal = groups_without_signal(rewards, valid)
    if len(opponents) != len(no_signal):
        raise ValueError(f"{len(opponents)} opponents for {len(no_signal)} prompt groups")
    by_opponent = {}
    for name in sorted({o for o in opponents if o is not None}):
        played = np.array([o == name for o in opponents], dtype=bool)
        by_opponent[name] = float(no_signal[played].mean())
    return float(no_signal.mean()), by_opponent
