"""SPARTA's reputation update (elo/reputation.py) on hand-computed sequences (issue #18, item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_elo.elo.reputation import Duel, Reputations, confidence, k_factor
from tests.test_elo import _pool as elo_pool  # weak 900, strong 1100, default 1000 around a 1000 policy

TANH_HALF = math.tanh(0.5)  # tanh of the starting sigma


def test_equal_reputations_move_by_the_confidence_floor():
    """R 100 / 100, sigma 0.5: z = 0, so the confidence is its floor 0.01; K = 10 on the first update:
    delta = 10 * (8 - 6) * tanh(0.5) * 0.01 / 20 = 0.0046212; sigma = std of one delta = 0 -> 0.1."""
    reputations = Reputations(["a", "b"])
    changes = reputations.record([Duel(player_a="a", player_b="b", score_a=8.0, score_b=6.0)])
    assert changes == {"a": pytest.approx(0.004621171572600098), "b": pytest.approx(-0.004621171572600098)}
    assert reputations.reputation["a"] == pytest.approx(100.004621171572600098)
    assert reputations.sigmas == {"a": 0.1, "b": 0.1} and reputations.updates == 1


def test_duels_of_one_batch_are_applied_in_turn():
    """a (120) beats b (100): z = 20 / sqrt(0.5) -> confidence 1, b loses tanh(0.5) = 0.4621. b then
    meets c (100) and sees its new rating: z = -0.4621 / sqrt(0.5), confidence erf(0.4621) = 0.48659
    (from the batch's starting ratings it would be the floor, 0.01); b loses 0.25 * tanh(0.5) * 0.48659."""
    reputations = Reputations(["a", "b", "c"])
    reputations.reputation["a"] = 120.0
    changes = reputations.record([Duel(player_a="a", player_b="b", score_a=7.0, score_b=5.0),
                                  Duel(player_a="b", player_b="c", score_a=6.0, score_b=6.5)])
    second = -0.05621503410653527
    assert changes["a"] == pytest.approx(TANH_HALF)
    assert changes["b"] == pytest.approx(-TANH_HALF + second) and changes["c"] == pytest.approx(-second)
    assert reputations.reputation["b"] == pytest.approx(100 - TANH_HALF + second)
    assert reputations.sigmas["b"] == pytest.approx(0.20295106157673723)  # std of its two deltas
    assert reputations.sigmas["a"] == 0.1  # one delta: std 0, floored


def test_k_decays_per_update_call_and_reputation_and_sigma_have_floors():
    assert k_factor(0) == 10 and k_factor(10) == pytest.approx(9.0) and k_factor(100) == 5.0
    assert confidence(0.0) == 0.01 and confidence(40.0) == 1.0 and confidence(-1.0) == pytest.approx(math.erf(1 / math.sqrt(2)))
    reputations = Reputations(["a", "b"])
    reputations.reputation.update(a=10.5, b=200.0)
    for _ in range(12):
        reputations.record([Duel(player_a="a", player_b="b", score_a=1.0, score_b=10.0)])
    assert reputations.reputation["a"] == 10.0 and reputations.updates == 12
    assert len(reputations.history["a"]) == 10  # sigma reads the last 10 deltas
    assert reputations.sigmas["b"] == pytest.approx(max(0.1, float(np.std(reputations.history["b"]))))


def test_weighted_scores_and_opponents():
    reputations = Reputations(["a", "b", "c", "d"])
    reputations.reputation.update(b=300.0, c=100.0)
    assert reputations.weighted_score({"b": 9.0, "c": 1.0}) == pytest.approx((300 * 9 + 100 * 1) / 400)
    reputations.reputation.update(a=100.0, d=101.0)
    assert reputations.nearest("a", 2) == ["c", "d"]
    rng = np.random.default_rng(0)
    drawn = [reputations.opponent("a", rng, p_random=0.0, nearest=1) for _ in range(20)]
    assert set(drawn) == {"c"}  # never the random branch: the nearest only
    drawn = [reputations.opponent("a", np.random.default_rng(seed), p_random=1.0) for seed in range(200)]
    assert set(drawn) == {"b", "c", "d"}  # uniform among the others, never itself
    again = Reputations(["a", "b", "c", "d"])
    again.load_state_dict(reputations.state_dict())
    assert again.state_dict() == reputations.state_dict()
    with pytest.raises(ValueError, match="cannot duel itself"):
        Duel(player_a="a", player_b="a", score_a=1, score_b=2)


def test_the_panel_weighs_votes_by_reputation_and_reads_json_scores():
    from megatron_elo.judges.panel import panel_verdict, parse_panel_score

    reputations = Reputations(["m0", "m1", "j1", "j2", "j3"])
    reputations.reputation.update(j1=300.0, j2=50.0, j3=50.0)
    # j1 (300) prefers a by 2; j2 and j3 (50 each) prefer b by 1: a wins the weighted aggregate, not the majority
    verdict = panel_verdict(scores_a={"j1": 8, "j2": 5, "j3": 5}, scores_b={"j1": 6, "j2": 6, "j3": 6}, reputations=reputations)
    assert verdict.aggregate_a == pytest.approx((300 * 8 + 50 * 5 + 50 * 5) / 400)
    assert verdict.aggregate_b == pytest.approx(6.0) and verdict.winner == "a" and verdict.agrees is False
    tie = panel_verdict(scores_a={"j1": 6}, scores_b={"j1": 6}, reputations=reputations)
    assert tie.winner is None and tie.agrees is None  # an exact tie makes no pair
    with pytest.raises(ValueError, match="every panel judge scores both answers"):
        panel_verdict(scores_a={"j1": 6}, scores_b={"j2": 6}, reputations=reputations)
    assert parse_panel_score('Sure. {"reason": "clear", "score": 7}') == 7.0
    assert parse_panel_score('{"score": 7.5') == 7.5  # cut JSON: the field alone
    for bad in ('{"score": 11}', "no json", '{"score": "high"}', '"score": 3 ... "score": 4', '{"score": true}'):
        assert parse_panel_score(bad) is None, bad


def _elo_games():
    from megatron_elo.elo.ratings import GameResult

    return [GameResult(player_a="policy", player_b="weak", score_a=1.0), GameResult(player_a="policy", player_b="strong", score_a=0.5)]


@pytest.mark.parametrize("kind", ["elo", "reputation"])
def test_the_elo_pool_and_the_reputations_serve_one_rating_interface(kind):
    """Either system through RatingSystem alone: a batch's changes are the ratings' moves, and a system restored from
    another's state_dict rates the next batch the same."""
    from megatron_elo.elo.rating_system import RatingSystem

    make, outcomes = {"elo": (elo_pool, _elo_games()),
                      "reputation": (lambda: Reputations(["a", "b", "c"]),
                                     [Duel(player_a="a", player_b="b", score_a=8.0, score_b=3.0),
                                      Duel(player_a="c", player_b="a", score_a=6.0, score_b=7.5)])}[kind]
    system = make()
    assert isinstance(system, RatingSystem)
    before = system.ratings()
    changes = system.record(outcomes)
    after = system.ratings()
    assert changes and all(after[name] == pytest.approx(before[name] + change) for name, change in changes.items())
    assert {n for n in after if after[n] != before[n]} == {n for n, c in changes.items() if c != 0}
    restored = make()
    restored.load_state_dict(system.state_dict())
    assert restored.ratings() == after and restored.record(outcomes) == system.record(outcomes)
    assert restored.ratings() == system.ratings()
    after["a" if kind == "reputation" else "policy"] = -1.0  # ratings() is a copy
    assert system.ratings() != after
