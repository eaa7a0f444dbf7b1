"""The three methods behind one interface: planning, games, outcomes, rating updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_elo.algorithms.base import groups_without_signal, no_signal_rates, outcome_matrix
from megatron_elo.algorithms.methods import EloEvolve, PointScore, StaticPairwise, build_algorithm
from megatron_elo.config.loader import load_config
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import Prompt, Response, Verdict

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def setup(*overrides: str, steps: int = 10):
    cfg = load_config(TINY, list(overrides))
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    return build_algorithm(cfg.algorithm, pool, total_steps=steps), pool


def batch(num_prompts: int = 3, n: int = 2):
    prompts = [Prompt(prompt_id=f"p{i}", text=f"{i}+{i}=", reference=str(2 * i)) for i in range(num_prompts)]
    samples = [[Response(player="policy", prompt_id=p.prompt_id, sample_index=j, text=f"ans{j}") for j in range(n)]
               for p in prompts]
    return prompts, samples


def answers_for(prompts, plan):
    return {(p.prompt_id, o): Response(player=o, prompt_id=p.prompt_id, sample_index=0, text="opp")
            for p, o in zip(prompts, plan.opponents, strict=True) if o is not None}


def test_registry_builds_each_method():
    assert isinstance(setup()[0], EloEvolve)
    assert isinstance(setup("algorithm.name=static_pairwise")[0], StaticPairwise)
    assert isinstance(setup("algorithm.name=point")[0], PointScore)


def test_elo_evolve_plans_from_the_pool_distribution_reproducibly():
    algo, pool = setup("algorithm.elo.temperature=100")
    prompts, _ = batch(num_prompts=4000)
    plan = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(7))
    again = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(7))
    assert plan.opponents == again.opponents
    expected = pool.selection_probabilities(temperature=100)
    assert list(plan.probabilities.values()) == pytest.approx(expected.tolist())
    freq = np.array([plan.opponents.count(n) for n in pool.names]) / len(prompts)
    assert np.allclose(freq, expected, atol=0.03)
    assert plan.temperature == 100


def test_elo_evolve_anneals_temperature():
    algo, _ = setup("algorithm.elo.temperature=200", "algorithm.elo.temperature_end=20",
                    "algorithm.elo.temperature_schedule=linear", steps=11)
    assert algo.temperature(0) == 200 and algo.temperature(10) == pytest.approx(20)


def test_static_pairwise_always_plays_its_opponent():
    algo, _ = setup("algorithm.name=static_pairwise", "algorithm.static_opponent=strong")
    prompts, _ = batch()
    assert algo.plan_opponents(prompts, step=3, rng=np.random.default_rng(0)).opponents == ["strong"] * 3


def test_games_outcomes_and_elo_update_end_to_end():
    algo, pool = setup("algorithm.name=static_pairwise", "algorithm.static_opponent=medium", "algorithm.tie_reward=0.25")
    prompts, samples = batch(num_prompts=2, n=2)
    plan = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(0))
    games = algo.make_games(prompts, samples, answers_for(prompts, plan), plan)
    assert [g.game_id for g in games] == [0, 1, 2, 3] and all(g.opponent_name == "medium" for g in games)
    verdicts = [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="opponent"),
                Verdict(game_id=2, winner="tie"), Verdict(game_id=3, valid=False, detail="unparsable")]
    outcomes = algo.outcomes(games, verdicts)
    assert [(o.reward, o.valid) for o in outcomes] == [(1.0, True), (0.0, True), (0.25, True), (0.0, False)]
    rewards, valid = outcome_matrix(outcomes, [p.prompt_id for p in prompts], 2)
    assert rewards.tolist() == [[1.0, 0.0], [0.25, 0.0]] and valid.tolist() == [[True, True], [True, False]]
    # Three valid games against a 1000-rated opponent from 1000: scores 1, 0, 0.5 -> mean change 0.
    deltas = algo.update_ratings(outcomes)
    assert deltas["policy"] == pytest.approx(0.0) and pool.member("medium").games == 3


def test_groups_without_signal_are_those_whose_advantages_are_all_zero():
    import torch

    from megatron_elo.loss.reference import group_advantages

    rewards = np.array([[1, 1, 1, 1], [0, 1, 0, 0], [0.5, 0.5, 1, 0.5], [1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], float)
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    # all won; mixed; the only different reward is invalid; the loss is invalid; all lost; one valid sample
    expected = [True, False, True, True, True, True]
    assert groups_without_signal(rewards, valid).tolist() == expected
    advantages = group_advantages(torch.tensor(rewards), torch.tensor(valid), std_normalize=True)
    assert (advantages.abs().sum(dim=1) == 0).tolist() == expected
    with pytest.raises(ValueError, match=r"must both be \[P, n\]"):
        groups_without_signal(rewards, valid[:, :2])
    overall, by_opponent = no_signal_rates(rewards, valid, ["weak", "medium", "weak", "strong", "weak", "medium"])
    assert overall == pytest.approx(5 / 6) and by_opponent == pytest.approx({"weak": 1.0, "medium": 0.5, "strong": 1.0})
    assert no_signal_rates(rewards, valid, [None] * 6) == (pytest.approx(5 / 6), {})
    with pytest.raises(ValueError, match="5 opponents for 6 prompt groups"):
        no_signal_rates(rewards, valid, [None] * 5)


def test_point_method_rewards_are_scores():
    algo, pool = setup("algorithm.name=point")
    prompts, samples = batch(num_prompts=1, n=3)
    plan = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(0))
    games = algo.make_games(prompts, samples, {}, plan)
    assert all(g.opponent is None for g in games)
    outcomes = algo.outcomes(games, [Verdict(game_id=0, score=7.0), Verdict(game_id=1, score=2.5),
                                     Verdict(game_id=2, valid=False)])
    assert [(o.reward, o.valid) for o in outcomes] == [(7.0, True), (2.5, True), (0.0, False)]
    assert algo.update_ratings(outcomes) == {} and pool.policy_rating == 1000.0


def test_verdicts_must_match_games_one_to_one():
    algo, _ = setup()
    prompts, samples = batch(num_prompts=1, n=2)
    plan = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(0))
    games = algo.make_games(prompts, samples, answers_for(prompts, plan), plan)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        algo.outcomes(games, [Verdict(game_id=0, winner="policy")])
    with pytest.raises(ValueError, match=r"unexpected \[5\]"):
        algo.outcomes(games, [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="tie"),
                              Verdict(game_id=5, winner="tie")])
    with pytest.raises(ValueError, match="1 duplicate"):
        algo.outcomes(games, [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="tie"),
                              Verdict(game_id=1, winner="tie")])


def test_missing_opponent_answer_and_misgrouped_samples():
    algo, _ = setup()
    prompts, samples = batch(num_prompts=2, n=1)
    plan = algo.plan_opponents(prompts, step=0, rng=np.random.default_rng(0))
    with pytest.raises(KeyError, match="no answer from opponent"):
        algo.make_games(prompts, samples, {}, plan)
    with pytest.raises(ValueError, match="is grouped under"):
        algo.make_games(prompts, samples[::-1], answers_for(prompts, plan), plan)
    with pytest.raises(ValueError, match="must have the same length"):
        algo.make_games(prompts[:1], samples, answers_for(prompts, plan), plan)
