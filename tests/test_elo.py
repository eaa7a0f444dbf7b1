"""Elo ratings, the pool and opponent selection: hand-computed values and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from megatron_elo.config.schema import EloConfig, ModelConfig, OpponentConfig
from megatron_elo.elo.pool import EloPool, PoolMember
from megatron_elo.elo.ratings import GameResult, apply_batch, batch_deltas, expected_score
from megatron_elo.elo.selection import draw_opponents, scheduled_temperature, selection_probabilities

ratings_st = st.floats(min_value=0, max_value=3000, allow_nan=False)
scores_st = st.sampled_from([0.0, 0.5, 1.0])


def test_expected_score_hand_values():
    assert expected_score(1000, 1000) == 0.5
    assert expected_score(1400, 1000) == pytest.approx(10 / 11)  # 1 / (1 + 10^-1)
    assert expected_score(1000, 1400) == pytest.approx(1 / 11)


def test_single_game_update_hand_values():
    new = apply_batch({"a": 1000.0, "b": 1000.0}, [GameResult(player_a="a", player_b="b", score_a=1.0)], k_factor=32)
    assert new == {"a": 1016.0, "b": 984.0}
    tie = apply_batch({"a": 1400.0, "b": 1000.0}, [GameResult(player_a="a", player_b="b", score_a=0.5)], k_factor=32)
    assert tie["a"] == pytest.approx(1400 + 32 * (0.5 - 10 / 11))


def test_sum_and_mean_reductions():
    games = [GameResult(player_a="p", player_b="x", score_a=1.0), GameResult(player_a="p", player_b="y", score_a=1.0)]
    ratings = {"p": 1000.0, "x": 1000.0, "y": 1000.0}
    assert batch_deltas(ratings, games, k_factor=32, reduction="sum") == {"p": 32.0, "x": -16.0, "y": -16.0}
    assert batch_deltas(ratings, games, k_factor=32, reduction="mean") == {"p": 16.0, "x": -16.0, "y": -16.0}
    with pytest.raises(ValueError, match="reduction must be"):
        batch_deltas(ratings, games, k_factor=32, reduction="median")


def test_bad_games_are_refused():
    with pytest.raises(ValueError, match="score_a must be 0, 0.5 or 1"):
        GameResult(player_a="a", player_b="b", score_a=0.7)
    with pytest.raises(ValueError, match="cannot play itself"):
        GameResult(player_a="a", player_b="a", score_a=1.0)
    with pytest.raises(KeyError, match="player 'c' has no rating"):
        batch_deltas({"a": 1.0}, [GameResult(player_a="a", player_b="c", score_a=1.0)], k_factor=1)


@settings(max_examples=200, deadline=None)
@given(ra=ratings_st, rb=ratings_st, scores=st.lists(scores_st, min_size=1, max_size=30),
       k=st.floats(1, 64), reduction=st.sampled_from(["mean", "sum"]))
def test_two_player_total_is_conserved(ra, rb, scores, k, reduction):
    games = [GameResult(player_a="a", player_b="b", score_a=s) for s in scores]
    new = apply_batch({"a": ra, "b": rb}, games, k_factor=k, reduction=reduction)
    assert new["a"] + new["b"] == pytest.approx(ra + rb, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(ratings=st.lists(ratings_st, min_size=3, max_size=5),
       pairs=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), scores_st), min_size=1, max_size=20),
       seed=st.integers(0, 2**31 - 1), reduction=st.sampled_from(["mean", "sum"]))
def test_batch_update_does_not_depend_on_game_order(ratings, pairs, seed, reduction):
    names = [f"p{i}" for i in range(len(ratings))]
    table = dict(zip(names, ratings, strict=True))
    games = [GameResult(player_a=names[a % len(names)], player_b=names[b % len(names)], score_a=s)
             for a, b, s in pairs if a % len(names) != b % len(names)]
    shuffled = [games[i] for i in np.random.default_rng(seed).permutation(len(games))]
    first = apply_batch(table, games, k_factor=32, reduction=reduction)
    second = apply_batch(table, shuffled, k_factor=32, reduction=reduction)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == pytest.approx(second[name], abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(policy=ratings_st, pool=st.lists(ratings_st, min_size=1, max_size=8),
       temperature=st.floats(1e-3, 1e4), selection=st.sampled_from(["rating_gap", "expected_score"]))
def test_probabilities_sum_to_one(policy, pool, temperature, selection):
    probs = selection_probabilities(policy, pool, temperature=temperature, selection=selection)
    assert probs.shape == (len(pool),)
    assert np.all(probs >= 0) and probs.sum() == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(policy=ratings_st, pool=st.lists(ratings_st, min_size=2, max_size=8, unique=True))
def test_limits_greedy_and_uniform(policy, pool):
    distances = np.abs(policy - np.array(pool))
    greedy = selection_probabilities(policy, pool, temperature=0.0)
    assert greedy[np.argmin(distances)] > 0 and np.all(greedy[distances > distances.min()] == 0)
    assert greedy.sum() == pytest.approx(1.0)
    assert np.allclose(selection_probabilities(policy, pool, temperature=math.inf), 1 / len(pool))
    # Large finite temperatures approach uniform; small ones approach greedy once the closest
    # opponent is closer by a margin much larger than T.
    assert np.allclose(selection_probabilities(policy, pool, temperature=1e9), 1 / len(pool), atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(policy=ratings_st, pool=st.lists(ratings_st, min_size=2, max_size=8, unique=True))
def test_small_temperature_approaches_greedy(policy, pool):
    distances = np.sort(np.abs(policy - np.array(pool)))
    assume(distances[1] - distances[0] >= 1.0)
    assert np.allclose(selection_probabilities(policy, pool, temperature=1e-2),
                       selection_probabilities(policy, pool, temperature=0.0), atol=1e-12)


def test_closer_opponents_are_more_likely_and_ties_split_evenly():
    probs = selection_probabilities(1000, [900, 1000, 1300], temperature=100)
    expected = np.exp([-1.0, 0.0, -3.0])
    assert np.allclose(probs, expected / expected.sum())
    assert np.allclose(selection_probabilities(1000, [900, 1100], temperature=0.0), [0.5, 0.5])
    scored = selection_probabilities(1000, [1000, 1400], temperature=0.1, selection="expected_score", target_win_rate=0.5)
    assert scored[0] > scored[1]


def test_bad_selection_input():
    with pytest.raises(ValueError, match="pool is empty"):
        selection_probabilities(1000, [], temperature=1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        selection_probabilities(1000, [1000], temperature=-1)
    with pytest.raises(ValueError, match="selection must be"):
        selection_probabilities(1000, [1000], temperature=1, selection="nearest")


def test_temperature_schedules():
    kwargs = dict(start=200.0, end=20.0)
    assert scheduled_temperature(5, 11, schedule="constant", **kwargs) == 200.0
    assert scheduled_temperature(0, 11, schedule="linear", **kwargs) == 200.0
    assert scheduled_temperature(5, 11, schedule="linear", **kwargs) == pytest.approx(110.0)
    assert scheduled_temperature(10, 11, schedule="linear", **kwargs) == pytest.approx(20.0)
    assert scheduled_temperature(5, 11, schedule="cosine", **kwargs) == pytest.approx(110.0)
    assert scheduled_temperature(10, 11, schedule="cosine", **kwargs) == pytest.approx(20.0)
    assert scheduled_temperature(3, 11, start=50.0, end=None, schedule="linear") == 50.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_seeded_draws_reproduce(seed):
    probs = np.array([0.2, 0.5, 0.3])
    a = draw_opponents(np.random.default_rng(seed), 64, probs, 1.0).opponent_indices
    b = draw_opponents(np.random.default_rng(seed), 64, probs, 1.0).opponent_indices
    assert np.array_equal(a, b) and a.dtype == np.int64 and set(a.tolist()) <= {0, 1, 2}


def test_draw_frequencies_follow_probabilities():
    probs = np.array([0.1, 0.6, 0.3])
    draws = draw_opponents(np.random.default_rng(0), 20000, probs, 1.0).opponent_indices
    assert np.allclose(np.bincount(draws, minlength=3) / 20000, probs, atol=0.015)


def _pool() -> EloPool:
    opponents = [OpponentConfig(name=n, model=ModelConfig(path=f"/m/{n}"), initial_rating=r)
                 for n, r in (("weak", 900.0), ("strong", 1100.0))]
    opponents.append(OpponentConfig(name="default", model=ModelConfig()))
    return EloPool.from_config(opponents, EloConfig(k_factor=32, initial_rating=1000, batch_reduction="sum"))


def test_pool_from_config_record_and_stats():
    pool = _pool()
    assert pool.ratings() == {"policy": 1000.0, "weak": 900.0, "strong": 1100.0, "default": 1000.0}
    assert pool.member("weak").model_path == "/m/weak" and math.isnan(pool.member("weak").win_rate)
    games = [GameResult(player_a="policy", player_b="strong", score_a=s) for s in (1.0, 0.5, 0.0, 1.0)]
    before = sum(pool.ratings().values())
    pool.record(games)
    strong = pool.member("strong")
    assert (strong.games, strong.wins, strong.ties, strong.losses) == (4, 1, 1, 2)
    assert strong.win_rate == pytest.approx(1.5 / 4)
    assert sum(pool.ratings().values()) == pytest.approx(before)
    e = expected_score(1000, 1100)
    assert pool.policy_rating == pytest.approx(1000 + 32 * (2.5 - 4 * e))


def test_pool_state_round_trip_and_mismatch():
    pool = _pool()
    pool.record([GameResult(player_a="policy", player_b="weak", score_a=1.0)])
    fresh = _pool()
    fresh.load_state_dict(pool.state_dict())
    assert fresh.ratings() == pool.ratings() and fresh.member("weak").wins == 0 and fresh.member("weak").losses == 1
    other = EloPool([PoolMember(name="x", rating=1.0)], policy_rating=1.0, k_factor=1.0)
    with pytest.raises(ValueError, match="does not match the configured opponents"):
        other.load_state_dict(pool.state_dict())
    with pytest.raises(ValueError, match="must be unique and not 'policy'"):
        EloPool([PoolMember(name="policy", rating=1.0)], policy_rating=1.0, k_factor=1.0)
    with pytest.raises(KeyError, match="no opponent 'zzz'"):
        pool.member("zzz")


# ----------------------------------------------------------------- rating-noise remedies (rating_update)

def _ladder_pool(update: str, **kwargs) -> EloPool:
    members = [PoolMember(name="weak", rating=900.0), PoolMember(name="strong", rating=1100.0)]
    return EloPool(members, policy_rating=1000.0, k_factor=32.0, rating_update=update, **kwargs)


def _policy_games(opponent: str, scores) -> list[GameResult]:
    return [GameResult(player_a="policy", player_b=opponent, score_a=s) for s in scores]


def test_share_reduction_scales_by_the_batch_share_hand_values():
    # 15 games against weak (all won), 1 against strong (lost): 16 in the batch
    games = _policy_games("weak", [1.0] * 15) + _policy_games("strong", [0.0])
    ratings = {"policy": 1000.0, "weak": 1000.0, "strong": 1000.0}
    deltas = batch_deltas(ratings, games, k_factor=32, reduction="share")
    assert deltas == pytest.approx({"policy": 32 * (15 * 0.5 - 0.5) / 16, "weak": -32 * 7.5 / 16, "strong": 32 * 0.5 / 16})
    mean = batch_deltas(ratings, games, k_factor=32, reduction="mean")
    assert deltas["policy"] == pytest.approx(mean["policy"])  # in every game: as with the mean
    assert mean["strong"] == pytest.approx(16.0) and deltas["strong"] == pytest.approx(1.0)  # 1/16 of the step
    assert sum(deltas.values()) == pytest.approx(0.0)


def test_anchored_and_prompt_share_pools():
    games = _policy_games("strong", [1.0, 1.0]) + _policy_games("weak", [1.0] * 14)
    anchored = _ladder_pool("anchored")
    anchored.record(games)
    batch = _ladder_pool("batch")
    batch.record(games)
    assert anchored.policy_rating == pytest.approx(batch.policy_rating) and anchored.policy_rating > 1000
    assert (anchored.member("weak").rating, anchored.member("strong").rating) == (900.0, 1100.0)
    assert anchored.member("strong").wins == 0 and anchored.member("strong").losses == 2  # statistics still kept
    shared = _ladder_pool("prompt_share")
    shared.record(games)
    assert batch.member("strong").rating - 1100 == pytest.approx(8 * (shared.member("strong").rating - 1100))
    with pytest.raises(ValueError, match="rating_update must be"):
        _ladder_pool("median")


def test_window_fit_matches_a_generic_optimiser():
    from scipy.optimize import minimize

    from megatron_elo.elo.fitted import fit_ratings

    scores, priors, before, tau = {"weak": (30.0, 40), "strong": (7.5, 24)}, {"weak": 900.0, "strong": 1100.0, "idle": 1300.0}, 1020.0, 150.0

    def negative_log_posterior(x):
        policy, rest = x[0], dict(zip(priors, x[1:], strict=True))
        total = (policy - before) ** 2 / (2 * tau**2) + sum((rest[n] - priors[n]) ** 2 / (2 * tau**2) for n in priors)
        for name, (s, n) in scores.items():
            e = expected_score(policy, rest[name])
            total -= s * math.log(e) + (n - s) * math.log(1 - e)
        return total

    reference = minimize(negative_log_posterior, np.array([before, *priors.values()]), method="BFGS", options={"gtol": 1e-10}).x
    fitted = fit_ratings(scores, policy_before=before, priors=priors, prior_scale=tau)
    assert list(fitted.values()) == pytest.approx(reference.tolist(), abs=1e-3)
    assert fitted["idle"] == pytest.approx(1300.0)  # never played: stays at its prior
    # a huge window: the gap is Elo's inversion of the win rate (10/11 -> 400 points), whatever the priors
    big = fit_ratings({"weak": (10e6, 11_000_000)}, policy_before=0.0, priors={"weak": 1000.0}, prior_scale=100.0)
    assert big["policy"] - big["weak"] == pytest.approx(400.0, abs=0.05)
    # all games won: the priors keep the fit finite
    assert math.isfinite(fit_ratings({"weak": (50.0, 50)}, policy_before=1000.0, priors={"weak": 900.0}, prior_scale=200)["policy"])
    with pytest.raises(KeyError, match="no prior rating"):
        fit_ratings({"ghost": (1.0, 2)}, policy_before=1000.0, priors={"weak": 900.0}, prior_scale=200)


def test_window_pool_forgets_old_games_and_resumes():
    pool = _ladder_pool("window_mle", window_steps=2, window_prior=200.0)
    for scores in ([0.0] * 16, [1.0] * 16, [1.0] * 16):  # the first step's losses leave the window at the third
        pool.record(_policy_games("strong", scores))
    assert [b["strong"] for b in pool.window.state_dict()] == [[16.0, 16], [16.0, 16]]
    saved = pool.state_dict()
    resumed = _ladder_pool("window_mle", window_steps=2, window_prior=200.0)
    resumed.load_state_dict(saved)
    games = _policy_games("weak", [1.0, 0.0, 0.5] * 5)
    assert resumed.record(games) == pool.record(games) and resumed.ratings() == pool.ratings()
    with pytest.raises(ValueError, match="rates games of the 'policy' only"):
        pool.record([GameResult(player_a="weak", player_b="strong", score_a=1.0)])
