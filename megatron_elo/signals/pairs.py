"""Preference pairs from a step's judged games (pairs_online).

    signal = pairs_from_rewards(rewards, valid, rule="best_vs_worst")           # games against opponents
    signal = pairs_from_tournament(results, n_per_prompt=n, prompts=P, rule=...)  # games among the samples

Only a decided difference makes a pair: equal rewards, ties and invalid verdicts make none, and a
prompt without any pair is counted. Each pair carries the two answers' win rates in the step's
games (SPPO's soft targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_elo.flow import PairSignal, PreferencePair
from megatron_elo.matchmaking.tournament import BracketResult
from megatron_elo.signals.scored import best_index, worst_index


def pairs_from_rewards(rewards: np.ndarray, valid: np.ndarray, *, rule: str) -> PairSignal:
    """[P, n] rewards of the samples' games against opponents (1 win, 0 loss, tie reward) -> pairs.
    best_vs_worst: the highest-reward valid sample vs the lowest (first index among equals);
    all_decided: every valid (i, j) with r_i > r_j. Win rates: the samples' rewards."""
    pairs: list[PreferencePair] = []
    without = 0
    for p in range(rewards.shape[0]):
        mine = [j for j in range(rewards.shape[1]) if valid[p, j]]
        found: list[tuple[int, int]] = []
        if rule == "best_vs_worst" and mine:
            row = np.where(valid[p], rewards[p], np.nan)
            best, worst = best_index(row), worst_index(row)  # the first among equals, as signals/scored.py's
            found = [(best, worst)] if rewards[p, best] > rewards[p, worst] else []
        elif rule == "all_decided":
            found = [(i, j) for i in mine for j in mine if rewards[p, i] > rewards[p, j]]
        elif rule != "best_vs_worst":
            raise ValueError(f"algorithm.pairs.rule={rule!r}: against opponents use best_vs_worst or all_decided")
        without += not found
        pairs += [PreferencePair(prompt_index=p, chosen=i, rejected=j, chosen_win=float(rewards[p, i]),
                                 rejected_win=float(rewards[p, j])) for i, j in found]
    decided = int(valid.sum())
    return PairSignal(pairs=tuple(pairs), prompts_without_pair=without, decided_games=decided,
                      undecided_games=int(valid.size - decided))


def pairs_from_tournament(results: Sequence[BracketResult], *, rule: str) -> PairSignal:
    """One knock-out result per prompt (in prompt order) -> pairs. best_vs_worst: the champion vs the losers'
    bracket's last (both standing by decided games); winner_vs_beaten: the champion vs each answer it beat;
    all_decided: every decided game's (winner, loser)."""
    pairs: list[PreferencePair] = []
    without = decided = undecided = 0
    for p, result in enumerate(results):
        wins = result.win_rates()
        games = [(won, lost) for won, lost, settled in result.games if settled]
        decided, undecided = decided + len(games), undecided + sum(not settled for *_, settled in result.games)
        if rule == "best_vs_worst":
            found = [(result.champion, result.last)] if result.champion_settled and result.last_settled else []
        elif rule == "winner_vs_beaten":
            found = [(won, lost) for won, lost in games if won == result.champion]
        elif rule == "all_decided":
            found = games
        else:
            raise ValueError(f"algorithm.pairs.rule: unknown rule {rule!r}")
        found = [(won, lost) for won, lost in found if won != lost]
        without += not found
        pairs += [PreferencePair(prompt_index=p, chosen=won, rejected=lost, chosen_win=wins[won], rejected_win=wins[lost])
                  for won, lost in found]
    return PairSignal(pairs=tuple(pairs), prompts_without_pair=without, decided_games=decided, undecided_games=undecided)
