"""How noisy is each training signal under the same judge noise? (Elo-Evolve's "4.5x" claim.)

The paper gives no protocol; this is ours. For answers a to a prompt (with an opponent answer b):
    pairwise signal  s = 1 / 0.5 / 0 (a beats / ties / loses to b), judged both ways
    absolute signal  s = score(a) / 10 on [0, 1]
Clean = noise-free judge; noisy = the same judge with probability ``noise`` of a random verdict.
    noise-to-signal ratio  NSR = E[(noisy - clean)^2] / Var(clean)
over many answers and repeated judgements. Lower is a cleaner training signal.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_elo.flow import SCORE_OF_WINNER, Game, Prompt, Response
from megatron_elo.judges.programmatic import ArithmeticJudge


@dataclass(frozen=True, kw_only=True)
class NoiseReport:
    """Noise-to-signal ratios of both signals, on ``items`` answers x ``repeats`` judgements."""

    noise: float
    items: int
    repeats: int
    pairwise_nsr: float
    absolute_nsr: float

    @property
    def absolute_over_pairwise(self) -> float:
        """How many times noisier the absolute signal is (the paper claims about 4.5)."""
        return self.absolute_nsr / self.pairwise_nsr


def _signals(judge: ArithmeticJudge, games: Sequence[Game], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pairwise = np.array([SCORE_OF_WINNER[v.winner] for v in judge.judge_pairs(games, rng)])
    absolute = np.array([v.score for v in judge.score(games, rng)]) / 10.0
    return pairwise, absolute


def noise_to_signal(games: Sequence[Game], *, noise: float, repeats: int = 20, seed: int = 0) -> NoiseReport:
    """NSR of pairwise vs absolute signals for ``games`` (each with a reference and an opponent answer)."""
    rng = np.random.default_rng(seed)
    clean_pair, clean_abs = _signals(ArithmeticJudge(noise=0.0), games, rng)
    noisy = ArithmeticJudge(noise=noise)
    err_pair = err_abs = 0.0
    for _ in range(repeats):
        pair, absolute = _signals(noisy, games, rng)
        err_pair += float(np.mean((pair - clean_pair) ** 2))
        err_abs += float(np.mean((absolute - clean_abs) ** 2))
    return NoiseReport(noise=noise, items=len(games), repeats=repeats,
                       pairwise_nsr=err_pair / repeats / max(float(np.var(clean_pair)), 1e-12),
                       absolute_nsr=err_abs / repeats / max(float(np.var(clean_abs)), 1e-12))


_PROBLEM = re.compile(r"^(\d+)\+(\d+)=$")


def games_from_answer_cache(store_path: str | Path, prompts: Sequence[Prompt]) -> list[Game]:
    """Every pair of different players' answers to the same problem, from a run's answer store
    (``<output_dir>/opponent_cache/answers.sqlite``; ``prompts``: the problems its prompt ids name):
    real answers of varied quality. A player's answers to one problem under several seeds count once."""
    import sqlite3

    store_path = Path(store_path)
    if not store_path.is_file():
        return []
    by_id = {p.prompt_id: p for p in prompts if p.reference is not None and _PROBLEM.match(p.text)}
    by_problem: dict[str, dict[str, str]] = {}
    with contextlib.closing(sqlite3.connect(store_path)) as connection:
        for opponent, prompt_id, text in connection.execute("SELECT opponent, prompt_id, text FROM answers ORDER BY key"):
            if prompt_id in by_id:
                by_problem.setdefault(by_id[prompt_id].text, {}).setdefault(opponent, text)
    games = []
    for text, answers in sorted(by_problem.items()):
        a, b = map(int, _PROBLEM.match(text).groups())
        prompt = Prompt(prompt_id=text, text=text, reference=str(a + b))
        players = sorted(answers)
        for i, first in enumerate(players):
            for second in players[i + 1:]:
                games.append(Game(game_id=len(games), prompt=prompt,
                                  policy=Response(player=first, prompt_id=text, sample_index=0, text=answers[first]),
                                  opponent=Response(player=second, prompt_id=text, sample_index=0, text=answers[second])))
    return games
