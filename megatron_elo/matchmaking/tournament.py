"""A knock-out tournament among one prompt's n samples (INPO's pair selection), round by round.

    bracket = Knockout(n)
    while not bracket.done:
        games = bracket.next_games()                  # [(a, b)]: sample a shown first
        bracket.record([winner_or_None for each game])  # None: tie or invalid verdict
    result = bracket.result()

Winners' bracket: pairs play, winners go on, until one is left (n - 1 games): the champion. Losers'
bracket: the first round's losers play, the loser goes on, until one is left (floor(n/2) - 1 games):
the last. Both brackets run side by side, so the rounds of all prompts can be judged in one batch.
An odd one out gets a bye. An undecided game (tie, invalid verdict) sends its first-shown sample on; a
champion whose final win, or a last whose final loss, was undecided is "not settled", and best_vs_worst
makes no pair of it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BracketResult:
    """The tournament's games and standing of one prompt's samples."""

    games: tuple[tuple[int, int, bool], ...]  # (winner, loser, settled) in play order (unsettled: first shown "won")
    champion: int
    champion_settled: bool  # the champion's final win was decided
    last: int
    last_settled: bool  # the last's final loss was decided
    samples: int

    def win_rates(self) -> list[float]:
        """Each sample's share of its settled games won (0.5 without a settled game)."""
        won, played = [0] * self.samples, [0] * self.samples
        for winner, loser, settled in self.games:
            if settled:
                won[winner] += 1
                played[winner] += 1
                played[loser] += 1
        return [w / g if g else 0.5 for w, g in zip(won, played, strict=True)]


class _Bracket:
    """One single-elimination bracket; ``keep_winners`` False: the losers go on (the losers' bracket)."""

    def __init__(self, entrants: list[int], *, keep_winners: bool, clean: dict[int, bool] | None = None):
        self.standing, self.keep_winners = list(entrants), keep_winners
        self.clean = clean or {e: True for e in entrants}  # whether its latest game was decided
        self.pending: list[tuple[int, int]] = []

    @property
    def done(self) -> bool:
        return len(self.standing) <= 1 and not self.pending

    def next_games(self) -> list[tuple[int, int]]:
        self.pending = [(self.standing[i], self.standing[i + 1]) for i in range(0, len(self.standing) - 1, 2)]
        return list(self.pending)

    def record(self, winners: list[int | None]) -> list[tuple[int, int, bool]]:
        """The round's winners (None: undecided) -> (winner, loser, settled) per game; the bracket moves on."""
        bye = [self.standing[-1]] if len(self.standing) % 2 else []
        going_on, played = [], []
        for (a, b), winner in zip(self.pending, winners, strict=True):
            settled = winner is not None
            winner = a if winner is None else winner
            loser = b if winner == a else a
            played.append((winner, loser, settled))
            advancing = winner if self.keep_winners else loser
            self.clean[advancing] = settled
            going_on.append(advancing)
        self.standing, self.pending = going_on + bye, []
        return played


class Knockout:
    """The two brackets of one prompt's samples (see the module docstring)."""

    def __init__(self, samples: int):
        if samples < 2:
            raise ValueError(f"a tournament needs at least 2 samples, got {samples}")
        self.samples = samples
        self.winners = _Bracket(list(range(samples)), keep_winners=True)
        self.losers: _Bracket | None = None  # filled by the first round's losers
        self.games: list[tuple[int, int, bool]] = []
        self._active: list[_Bracket] = []

    @property
    def done(self) -> bool:
        return self.winners.done and self.losers is not None and self.losers.done

    def next_games(self) -> list[tuple[int, int]]:
        """This round's games of both brackets, (first shown, second shown)."""
        self._active = [b for b in (self.winners, self.losers) if b is not None and not b.done]
        return [game for bracket in self._active for game in bracket.next_games()]

    def record(self, winners: list[int | None]) -> None:
        """Winners of ``next_games``' games, in order (None: tie or invalid)."""
        first_round = self.losers is None
        offset = 0
        for bracket in self._active:
            count = len(bracket.pending)
            played = bracket.record(winners[offset:offset + count])
            offset += count
            self.games += played
            if first_round and bracket is self.winners:
                self.losers = _Bracket([loser for _, loser, _ in played], keep_winners=False,
                                       clean={loser: settled for _, loser, settled in played})

    def result(self) -> BracketResult:
        """The standing once ``done``."""
        champion = self.winners.standing[0]
        last = self.losers.standing[0] if self.losers.standing else champion
        return BracketResult(games=tuple(self.games), champion=champion, champion_settled=self.winners.clean[champion],
                             last=last, last_settled=self.losers.clean.get(last, False), samples=self.samples)
