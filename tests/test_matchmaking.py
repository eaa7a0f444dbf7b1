"""The three methods' stages: matchmakers (planning), games, outcomes, rating updates, no-signal shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_elo.config.loader import load_config
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import Prompt, Response, Verdict
from megatron_elo.matchmaking.games import make_games, opponent_requests
from megatron_elo.matchmaking.matchmakers import (
    AbsoluteMatchmaker,
    EloMatchmaker,
    StaticMatchmaker,
    update_ratings,
)
from megatron_elo.signals.outcomes import (
    groups_without_signal,
    no_signal_rates,
    outcome_matrix,
    score_outcomes,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def setup(*overrides: str, steps: int = 10, samples: int = 2):
    """The matchmaker of the recipe the config names (as recipes/<name>.py builds it) and its pool."""
    cfg = load_config(TINY, list(overrides))
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    matchmaker = {"elo_evolve": lambda: EloMatchmaker(pool, cfg.algorithm.elo, total_steps=steps, samples=samples),
                  "static_pairwise": lambda: StaticMatchmaker(cfg.algorithm.static_opponent, samples=samples),
                  "point": lambda: AbsoluteMatchmaker(samples=samples)}[cfg.algorithm.name]()
    return matchmaker, pool, cfg.algorithm.tie_reward


def batch(num_prompts: int = 3, n: int = 2):
    prompts = [Prompt(prompt_id=f"p{i}", text=f"{i}+{i}=", reference=str(2 * i)) for i in range(num_prompts)]
    samples = [[Response(player="policy", prompt_id=p.prompt_id, sample_index=j, text=f"ans{j}") for j in range(n)]
               for p in prompts]
    return prompts, samples


def answers_for(prompts, plan):
    return {(p.prompt_id, o): Response(player=o, prompt_id=p.prompt_id, sample_index=0, text="opp")
            for p, o in zip(prompts, plan.opponents, strict=True) if o is not None}


def test_recipe_registry_names_each_method():
    from megatron_elo.recipes import RECIPES, recipe_builder

    assert set(RECIPES) == {"elo_evolve", "static_pairwise", "point", "pairs_online", "pairs_offline", "sparta",
                            "eva", "tsr", "evolve"}
    assert all(callable(recipe_builder(name)) for name in RECIPES)
    with pytest.raises(ValueError, match=r"algorithm.name: 'dpo' is not a recipe; choose one of"):
        recipe_builder("dpo")


def test_elo_evolve_plans_from_the_pool_distribution_reproducibly():
    algo, pool, _ = setup("algorithm.elo.temperature=100")
    prompts, _ = batch(num_prompts=4000)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(7))
    again = algo.plan(prompts, step=0, rng=np.random.default_rng(7))
    assert plan.opponents == again.opponents
    expected = pool.selection_probabilities(temperature=100)
    assert list(plan.probabilities.values()) == pytest.approx(expected.tolist())
    freq = np.array([plan.opponents.count(n) for n in pool.names]) / len(prompts)
    assert np.allclose(freq, expected, atol=0.03)
    assert plan.temperature == 100
    assert [m.prompt_index for m in plan.matches] == list(range(4000)) and {m.player_samples for m in plan.matches} == {2}


def test_elo_evolve_anneals_temperature():
    algo, _, _ = setup("algorithm.elo.temperature=200", "algorithm.elo.temperature_end=20",
                       "algorithm.elo.temperature_schedule=linear", steps=11)
    assert algo.temperature(0) == 200 and algo.temperature(10) == pytest.approx(20)


def test_static_pairwise_always_plays_its_opponent():
    algo, _, _ = setup("algorithm.name=static_pairwise", "algorithm.static_opponent=strong")
    prompts, _ = batch()
    plan = algo.plan(prompts, step=3, rng=np.random.default_rng(0))
    assert plan.opponents == ["strong"] * 3 and opponent_requests(plan, prompts) == {"strong": prompts}


def test_games_outcomes_and_elo_update_end_to_end():
    algo, pool, tie_reward = setup("algorithm.name=static_pairwise", "algorithm.static_opponent=medium",
                                   "algorithm.tie_reward=0.25")
    prompts, samples = batch(num_prompts=2, n=2)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(0))
    games = make_games(plan, prompts, samples, answers_for(prompts, plan))
    assert [g.game_id for g in games] == [0, 1, 2, 3] and all(g.opponent_name == "medium" for g in games)
    verdicts = [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="opponent"),
                Verdict(game_id=2, winner="tie"), Verdict(game_id=3, valid=False, detail="unparsable")]
    outcomes = score_outcomes(games, verdicts, tie_reward=tie_reward)
    assert [(o.reward, o.valid) for o in outcomes] == [(1.0, True), (0.0, True), (0.25, True), (0.0, False)]
    rewards, valid = outcome_matrix(outcomes, [p.prompt_id for p in prompts], 2)
    assert rewards.tolist() == [[1.0, 0.0], [0.25, 0.0]] and valid.tolist() == [[True, True], [True, False]]
    # Three valid games against a 1000-rated opponent from 1000: scores 1, 0, 0.5 -> mean change 0.
    deltas = update_ratings(pool, outcomes)
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
    algo, pool, tie_reward = setup("algorithm.name=point", samples=3)
    prompts, samples = batch(num_prompts=1, n=3)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(0))
    games = make_games(plan, prompts, samples, {})
    assert all(g.opponent is None for g in games) and opponent_requests(plan, prompts) == {}
    outcomes = score_outcomes(games, [Verdict(game_id=0, score=7.0), Verdict(game_id=1, score=2.5),
                                      Verdict(game_id=2, valid=False)], tie_reward=tie_reward)
    assert [(o.reward, o.valid) for o in outcomes] == [(7.0, True), (2.5, True), (0.0, False)]
    assert update_ratings(pool, outcomes) == {} and pool.policy_rating == 1000.0


def test_verdicts_must_match_games_one_to_one():
    algo, _, _ = setup()
    prompts, samples = batch(num_prompts=1, n=2)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(0))
    games = make_games(plan, prompts, samples, answers_for(prompts, plan))
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        score_outcomes(games, [Verdict(game_id=0, winner="policy")], tie_reward=0.5)
    with pytest.raises(ValueError, match=r"unexpected \[5\]"):
        score_outcomes(games, [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="tie"),
                               Verdict(game_id=5, winner="tie")], tie_reward=0.5)
    with pytest.raises(ValueError, match="1 duplicate"):
        score_outcomes(games, [Verdict(game_id=0, winner="policy"), Verdict(game_id=1, winner="tie"),
                               Verdict(game_id=1, winner="tie")], tie_reward=0.5)


def test_missing_opponent_answer_and_misgrouped_samples():
    algo, _, _ = setup(samples=1)
    prompts, samples = batch(num_prompts=2, n=1)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(0))
    with pytest.raises(KeyError, match="no answer from opponent"):
        make_games(plan, prompts, samples, {})
    with pytest.raises(ValueError, match="is grouped under"):
        make_games(plan, prompts, samples[::-1], answers_for(prompts, plan))
    with pytest.raises(ValueError, match="must have the same length"):
        make_games(plan, prompts[:1], samples, answers_for(prompts, plan))


def test_games_made_per_opponent_keep_the_ids_they_have_together():
    """The games recipe makes each opponent's games as its answers arrive: the same games, same ids."""
    algo, _, _ = setup("algorithm.elo.temperature=1000", samples=3)
    prompts, samples = batch(num_prompts=12, n=3)
    plan = algo.plan(prompts, step=0, rng=np.random.default_rng(3))
    answers = answers_for(prompts, plan)
    together = make_games(plan, prompts, samples, answers)
    assert [g.game_id for g in together] == list(range(36))
    apart = sorted((g for name in opponent_requests(plan, prompts) for g in make_games(plan, prompts, samples, answers,
                                                                                       opponent=name)),
                   key=lambda g: g.game_id)
    assert len(opponent_requests(plan, prompts)) > 1 and apart == together
