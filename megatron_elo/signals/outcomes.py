"""Games + verdicts -> one Outcome per scored sample, and the outcomes laid out per prompt group.

    outcomes = score_outcomes(games, verdicts, tie_reward=0.5)     # pairwise: 1 / 0 / tie; alone: the score
    rewards, valid = outcome_matrix(outcomes, prompt_ids, n)       # [P, n] each
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_elo.flow import Game, Outcome, Verdict


def score_outcomes(games: Sequence[Game], verdicts: Sequence[Verdict], *, tie_reward: float) -> list[Outcome]:
    """One Outcome per game (game order): a pairwise win 1, loss 0, tie ``tie_reward``; a single-answer
    game its score; an invalid verdict drops the sample (valid False, reward 0)."""
    by_game = verdicts_by_game(games, verdicts)
    return [_outcome(game, by_game[game.game_id], tie_reward) for game in games]


def _outcome(game: Game, verdict: Verdict, tie_reward: float) -> Outcome:
    common = dict(game_id=game.game_id, prompt_id=game.prompt.prompt_id, sample_index=game.policy.sample_index,
                  opponent=game.opponent_name, player=game.policy.player)
    if game.opponent is None:
        if not verdict.valid or verdict.score is None:
            return Outcome(**common, reward=0.0, valid=False)
        return Outcome(**common, reward=float(verdict.score), valid=True)
    if not verdict.valid or verdict.winner is None:
        return Outcome(**common, reward=0.0, valid=False)
    reward = {"policy": 1.0, "opponent": 0.0, "tie": tie_reward}[verdict.winner]
    return Outcome(**common, reward=reward, valid=True, winner=verdict.winner)


def verdicts_by_game(games: Sequence[Game], verdicts: Sequence[Verdict]) -> dict[int, Verdict]:
    """{game_id: verdict}; raises naming missing, unexpected and duplicate verdicts (one per game is required)."""
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
    per opponent over the prompts played against it (``opponents``: [P], None for single-answer prompts)."""
    no_signal = groups_without_signal(rewards, valid)
    if len(opponents) != len(no_signal):
        raise ValueError(f"{len(opponents)} opponents for {len(no_signal)} prompt groups")
    by_opponent = {}
    for name in sorted({o for o in opponents if o is not None}):
        played = np.array([o == name for o in opponents], dtype=bool)
        by_opponent[name] = float(no_signal[played].mean())
    return float(no_signal.mean()), by_opponent
