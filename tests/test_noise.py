"""The noise-to-signal measurement against hand-computed expectations."""

from __future__ import annotations

import pytest

from megatron_elo.analysis.noise import games_from_answer_cache, noise_to_signal
from megatron_elo.flow import Game, Prompt, Response


def _game(i: int, policy: str, opponent: str) -> Game:
    prompt = Prompt(prompt_id=f"p{i}", text="2+3=", reference="5")
    return Game(game_id=i, prompt=prompt, policy=Response(player="policy", prompt_id=prompt.prompt_id, sample_index=0, text=policy),
                opponent=Response(player="opp", prompt_id=prompt.prompt_id, sample_index=0, text=opponent))


def test_noise_free_judge_has_no_noise():
    report = noise_to_signal([_game(0, "5", "4"), _game(1, "3", "5")], noise=0.0, repeats=3)
    assert report.pairwise_nsr == 0.0 and report.absolute_nsr == 0.0


def test_pure_noise_matches_hand_expectations():
    # Clean: a win (pairwise 1, score 10/10) and a loss (0, score 8/10 for "3" vs truth 5).
    games = [_game(0, "5", "4"), _game(1, "3", "5")]
    report = noise_to_signal(games, noise=1.0, repeats=4000, seed=1)
    # Both orders are fair coins; a disagreement is a tie: P(win) = P(loss) = 1/4, P(tie) = 1/2.
    # E[(noisy - 1)^2] = 1/4 * 1 + 1/2 * 1/4 = 0.375 (same for a clean loss); Var(clean) = 0.25.
    assert report.pairwise_nsr == pytest.approx(0.375 / 0.25, rel=0.05)
    # Absolute: noisy ~ U(0, 1); E[(U - s)^2] = s^2 - s + 1/3 for s = 1.0 and 0.8; Var(clean) = 0.01.
    expected = ((1.0 - 1.0 + 1 / 3) + (0.64 - 0.8 + 1 / 3)) / 2 / 0.01
    assert report.absolute_nsr == pytest.approx(expected, rel=0.05)


def test_games_from_a_runs_answer_store(tmp_path):
    """Pairs of different players' answers to one problem, read from the sqlite store the runs write
    (it used to read jsonl caches, which no run writes any more)."""
    from megatron_elo.flow import Prompt
    from megatron_elo.players.answer_store import AnswerStore

    store = AnswerStore(tmp_path / "answers.sqlite")
    store.put_many([("k1", "p0", "4"), ("k2", "p1", "2")], opponent="weak")
    store.put_many([("k3", "p0", "5"), ("k4", "p0", "6")], opponent="strong")  # two seeds: the first (by key) counts
    prompts = [Prompt(prompt_id="p0", text="2+3=", reference="5"), Prompt(prompt_id="p1", text="1+1=", reference="2")]
    games = games_from_answer_cache(tmp_path / "answers.sqlite", prompts)
    assert len(games) == 1  # only 2+3= was answered by two players
    assert (games[0].prompt.reference, games[0].policy.text, games[0].opponent.text) == ("5", "5", "4")
    assert games_from_answer_cache(tmp_path / "missing.sqlite", prompts) == []
