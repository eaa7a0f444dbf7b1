"""SPARTA: duel planning, the checker and LLM panels, verdicts / pairs / label accuracy on hand-built duels,
config checks, and (slow) the tribe on tiny real engines: every player trains and syncs, a resumed run
equals an uninterrupted one bitwise, the LLM panel asks every judge its prompts."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from megatron_elo.config.loader import ConfigError, config_from_dict, load_config, read_yaml
from megatron_elo.config.validate import validate
from megatron_elo.elo.reputation import Reputations
from megatron_elo.flow import Prompt, PromptBatch, Response
from megatron_elo.judges.panel import PanelScores, checker_score, fill_score_template, noisy_checker_scores
from megatron_elo.matchmaking.duels import DuelMatch, DuelPlan, plan_duels
from megatron_elo.signals.duels import duel_pair_rows, judge_duels
from tests.test_loop import players  # noqa: F401  (the tiny players, made once per module)
from tests.two_ranks import tensor_parallel_twin

SPARTA = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu_sparta.yaml"


def reputations_at(**ratings: float) -> Reputations:
    reps = Reputations(sorted(ratings))
    reps.reputation.update(ratings)
    return reps


# ---------------------------------------------------------------- duels


def test_round_robin_first_players_and_nearest_opponents():
    reps = reputations_at(a=100.0, b=130.0, c=90.0, d=60.0)
    plan = plan_duels(6, reps, step=1, rng=np.random.default_rng(0), first="round_robin", p_random=0.0, nearest=1)
    # iteration 1 of 6 instructions: players (6 + i) mod 4 in name order -> c d a b c d
    assert [d.first for d in plan.duels] == ["c", "d", "a", "b", "c", "d"]
    # p_random 0, one neighbour: always the closest reputation (c: a at 10; d: c at 30; a: c at 10; b: a at 30)
    assert [d.second for d in plan.duels] == ["a", "c", "c", "a", "a", "c"]
    assert plan.answering("a") == [0, 2, 3, 4] and plan.judging("a") == [1, 5]


def test_random_opponents_are_uniform_over_the_others():
    reps = reputations_at(a=100.0, b=300.0, c=100.0, d=100.0)
    plan = plan_duels(3000, reps, step=0, rng=np.random.default_rng(1), first="uniform", p_random=1.0, nearest=1)
    assert all(d.first != d.second for d in plan.duels)
    against_b = [d.second == "b" for d in plan.duels if d.first == "a"]  # b is never a's nearest: only random picks it
    assert abs(np.mean(against_b) - 1 / 3) < 0.05
    firsts = [d.first for d in plan.duels]
    assert all(abs(firsts.count(n) / 3000 - 0.25) < 0.03 for n in "abcd")


# ---------------------------------------------------------------- panels


def test_checker_scores_by_hand():
    assert checker_score("27", "27") == 10.0 and checker_score("25", "27") == 8.0
    assert checker_score("100", "27") == 1.0 and checker_score("2x", "27") == 1.0  # far off, not a number: the floor
    rng = np.random.default_rng(3)
    assert noisy_checker_scores({"j1": 0.0, "j2": 0.0}, "25", "27", rng) == {"j1": 8.0, "j2": 8.0}
    draws = [noisy_checker_scores({"j": 0.5}, "27", "27", rng)["j"] for _ in range(4000)]
    # noise 0.5: half the scores are uniform over 1-10, so 0.5 * 0.9 differ from the checker's 10
    assert abs(np.mean([d != 10.0 for d in draws]) - 0.45) < 0.03
    assert set(draws) <= set(map(float, range(1, 11)))


def batch_of(*problems: tuple[str, str]) -> PromptBatch:
    prompts = tuple(Prompt(prompt_id=f"q{i}", text=text, reference=ref) for i, (text, ref) in enumerate(problems))
    return PromptBatch(prompts=prompts, token_ids=tuple((10 + i, 11 + i) for i in range(len(prompts))))


def answer(player: str, i: int, text: str) -> Response:
    return Response(player=player, prompt_id=f"q{i}", sample_index=0, text=text, token_ids=tuple(ord(c) for c in text))


def test_weighted_and_plain_panels_decide_pairs_and_their_label_accuracy():
    batch = batch_of(("2+3=", "5"), ("4+4=", "8"), ("1+1=", "2"))
    plan = DuelPlan(duels=(DuelMatch(prompt_index=0, first="a", second="b"), DuelMatch(prompt_index=1, first="b", second="a"),
                           DuelMatch(prompt_index=2, first="a", second="b")))
    answers = {(0, "a"): answer("a", 0, "5"), (0, "b"): answer("b", 0, "7"), (1, "b"): answer("b", 1, "8"),
               (1, "a"): answer("a", 1, "9"), (2, "a"): answer("a", 2, "3"), (2, "b"): answer("b", 2, "1")}
    reps = reputations_at(a=100.0, b=100.0, good=150.0, noisy=50.0)
    panel = PanelScores(scores={
        # duel 0: good prefers a (right), noisy prefers b; weighted a 7.25 vs b 4.75, plain a 5.5 vs b 6.5
        (0, "a"): {"good": 9.0, "noisy": 2.0}, (0, "b"): {"good": 3.0, "noisy": 10.0},
        # duel 1: the same scores both sides under both weightings: an exact tie, no pair
        (1, "b"): {"good": 6.0, "noisy": 6.0}, (1, "a"): {"good": 6.0, "noisy": 6.0},
        # duel 2: both answers 1 off (equally good): decided (weighted a 6.0 vs b 5.5), left out of the label accuracy
        (2, "a"): {"good": 5.0, "noisy": 9.0}, (2, "b"): {"good": 6.0, "noisy": 4.0}})
    weighted = judge_duels(batch, plan, answers, panel, reps, weighting="reputation")
    assert [(p.prompt_index, p.chosen, p.rejected) for p in weighted.pairs] == [(0, "a", "b"), (2, "a", "b")]
    assert weighted.duels[0].score_a == pytest.approx(7.25) and weighted.duels[0].score_b == pytest.approx(4.75)
    assert weighted.duels[1].score_a == pytest.approx((150 * 5 + 50 * 9) / 200)
    metrics = weighted.metrics()
    # checkable: duel 0 (a right) and duel 1 (second's 9 for 8 is worse than first's 8: a tie, labelled by neither)
    assert metrics["pairs"] == 2 and metrics["duel_ties"] == 1 and metrics["label_accuracy/duels"] == 2
    assert metrics["label_accuracy/reputation"] == 0.5 and metrics["label_accuracy/uniform"] == 0.0
    assert math.isnan(metrics["panel_agreement"])  # duels 0 and 2 split one judge each way: no majority to agree
    assert metrics["duel_win_rate/a"] == pytest.approx((1 + 0.5 + 1) / 3) and metrics["duel_win_rate/b"] == pytest.approx(0.5 / 3)
    plain = judge_duels(batch, plan, answers, panel, reps, weighting="uniform")
    assert [(p.chosen, p.rejected) for p in plain.pairs] == [("b", "a"), ("a", "b")]  # duel 2: plain 7.0 vs 5.0
    rows = duel_pair_rows(batch, answers, weighted.pairs)
    assert rows.prompt_ids == ((10, 11), (12, 13)) and rows.chosen_ids[0] == (ord("5"),) and rows.rejected_ids[1] == (ord("1"),)


def test_llm_panel_asks_each_judge_its_duels_in_one_call_and_counts_what_it_cannot_read():
    from megatron_elo.recipes.sparta import SpartaRecipe

    calls = []

    class Scripted:
        """Stands in for the tribe: replies {"score": <len(prompt) % 10 + 1>}, except judge c, who rambles."""

        names = list("abcd")
        tokenizers = {name: SimpleNamespace(encode_prompt=lambda p: [1] * len(p.text), eos_id=0) for name in names}

        def generate_each(self, requests):
            replies = {}
            for name, request in requests.items():
                if request.prompts:  # as Tribe.generate_each: nothing to ask, no engine woken
                    calls.append((name, [p.prompt_id for p in request.prompts], request.settings.temperature))
                replies[name] = [SimpleNamespace(text="no idea" if name == "c" else f'{{"score": {len(p.text) % 10 + 1}}}')
                                 for p in request.prompts]
            return replies

    recipe = SpartaRecipe.__new__(SpartaRecipe)
    recipe.cfg = SimpleNamespace(algorithm=SimpleNamespace(sparta=SimpleNamespace(score_max_new_tokens=8)),
                                 rollout=SimpleNamespace(engine=SimpleNamespace(max_model_len=40)))
    recipe.tribe, recipe.template = Scripted(), "Q {question} A {answer} score?"
    batch = batch_of(("2+3=", "5"), ("4+4=", "8"))
    plan = DuelPlan(duels=(DuelMatch(prompt_index=0, first="a", second="b"), DuelMatch(prompt_index=1, first="c", second="a")))
    long_answer = "9" * 30  # its prompt (44 tokens + 8 to generate) is over the engine's 40
    answers = {(0, "a"): answer("a", 0, "5"), (0, "b"): answer("b", 0, "6"), (1, "c"): answer("c", 1, long_answer),
               (1, "a"): answer("a", 1, "8")}
    panel = recipe._llm_panel(batch, plan, answers)
    # one greedy call per judge, for the duels it is not in; the overlong prompt is not sent
    assert sorted(calls) == [("b", ["q1/a"], 0.0), ("c", ["q0/a", "q0/b"], 0.0), ("d", ["q0/a", "q0/b", "q1/a"], 0.0)]
    text = fill_score_template(recipe.template, question="2+3=", answer="5")
    assert text == "Q 2+3= A 5 score?"
    assert panel.scores[0, "a"] == {"c": 5.0, "d": float(len(text) % 10 + 1)}  # c's ramble: 5
    assert panel.scores[1, "c"] == {"b": 5.0, "d": 5.0}  # overlong for both judges
    # ... who then score its opponent's answer 5 as well, as the authors do (read alone, it would score 8)
    assert len(fill_score_template(recipe.template, question="4+4=", answer="8")) % 10 + 1 == 8
    assert panel.scores[1, "a"] == {"b": 5.0, "d": 5.0}
    assert panel.unparsed == 2 and panel.overlong == 2 and panel.parsed == 4


# ---------------------------------------------------------------- config


def test_sparta_config_problems_are_reported_together():
    overrides = ["players.p100.judge_noise=1.5", "players.p200.name=a/b", "players.p150.lr=-1", "rollout.n_per_prompt=2", "judge.noise=0.2",
                 "algorithm.sparta.p_random=2", "algorithm.sparta.nearest=0", "trainer.micro_batch_size=3",
                 "trainer.global_batch_size=3"]
    with pytest.raises(ConfigError) as err:
        validate(load_config(SPARTA, overrides), check_paths=False)
    text = str(err.value)
    for field in ("players.0.judge_noise", "players.2.name", "players.1.lr", "rollout.n_per_prompt", "judge.noise", "algorithm.sparta.p_random",
                  "algorithm.sparta.nearest", "trainer.micro_batch_size"):
        assert field in text, field
    raw = read_yaml(SPARTA)
    raw["players"] = raw["players"][:2] + [dict(raw["players"][0])]
    raw["algorithm"]["sparta"]["panel"] = "llm"
    with pytest.raises(ConfigError) as err:
        validate(config_from_dict(raw), check_paths=False)
    assert "repeated: ['p100']" in str(err.value) and "players.0.judge_noise: only the checker panel" in str(err.value)
    raw = read_yaml(SPARTA)
    raw["algorithm"]["name"] = "pairs_online"
    raw["rollout"]["n_per_prompt"] = 4
    with pytest.raises(ConfigError, match="players: only algorithm.name=sparta"):
        validate(config_from_dict(raw), check_paths=False)
    assert validate(load_config(SPARTA), check_paths=False).algorithm.sparta.weighting == "reputation"


def test_slices_must_divide_the_players_and_fit_the_world_with_their_engines():
    """Five players on two slices, the world one slice short, the engine spanning the world instead of a slice:
    every problem named with its fix; five players on five slices of one rank validate, and so does the 7B tribe
    on two slices of TP 2 x DP 2 (the world of 8)."""
    overrides = ["algorithm.sparta.slices=2", "cluster.devices_per_node=3", "rollout.engine.dp=3"]
    with pytest.raises(ConfigError) as err:
        validate(load_config(SPARTA, overrides), check_paths=False)
    text = str(err.value)
    assert "algorithm.sparta.slices=2: must be >= 1 and divide the 5 players" in text
    assert "parallel: tp*pp*dp x algorithm.sparta.slices=2 = 1*1*1*2 = 2 does not equal the trainer world size 3" in text
    assert "rollout.engine: colocated engine spans tp*dp = 1*3 = 3 ranks but the trainer has 1" in text
    with pytest.raises(ConfigError, match="algorithm.sparta.slices=0: must be >= 1"):
        validate(load_config(SPARTA, ["algorithm.sparta.slices=0"]), check_paths=False)
    five = validate(load_config(SPARTA, ["algorithm.sparta.slices=5", "cluster.devices_per_node=5"]), check_paths=False)
    assert five.algorithm.sparta.slices == 5
    seven_b = ["algorithm.sparta.slices=2", "parallel.dp=2", "rollout.engine.dp=2"]
    assert validate(load_config(SPARTA.parent / "qwen2.5-7b_sparta.yaml", seven_b), check_paths=False).parallel.dp == 2


def test_the_7b_config_validates_with_the_authors_settings():
    cfg = validate(load_config(SPARTA.parent / "qwen2.5-7b_sparta.yaml"), check_paths=False)
    sparta, pairs = cfg.algorithm.sparta, cfg.algorithm.pairs
    assert len(cfg.players) == 10 and (sparta.p_random, sparta.nearest, sparta.panel) == (0.6, 5, "llm")
    assert (pairs.loss, pairs.beta, pairs.reference, pairs.epochs, cfg.trainer.lr) == ("dpo", 0.1, "previous_iterate", 1, 1e-6)
    assert (cfg.trainer.steps, cfg.rollout.prompts_per_step, cfg.rollout.temperature, cfg.rollout.top_p) == (8, 1000, 0.7, 0.95)
    assert sparta.offload_idle and cfg.trainer.warmup_steps / cfg.trainer.steps < 0.15


# ---------------------------------------------------------------- the tribe on tiny real engines (slow)


def sparta_config(root: Path, players: Path, **sparta) -> object:  # noqa: F811
    """tiny_cpu_sparta.yaml shrunk onto the test's tiny players: four players, 4 iterations of 8 duels."""
    raw = read_yaml(SPARTA)
    raw.update(output_dir=str(root), tracking={"backend": "none"})
    names = ("weak", "policy_init", "medium", "strong")
    raw["model"]["path"] = str(players / "policy_init")
    raw["players"] = [{"name": n, "path": str(players / n), "judge_noise": noise} for n, noise in zip(names, (0.6, 0.4, 0.2, 0.0), strict=True)]
    raw["opponents"][0]["model"]["path"] = str(players / "medium")
    raw["prepare"]["snapshots"] = [{"path": str(players / n), "sft_steps": s} for n, s in zip(names, (3, 5, 8, 12), strict=True)]
    raw["trainer"].update(steps=4, lr=1e-3, lr_schedule="constant", warmup_steps=0, micro_batch_size=8, global_batch_size=16)
    raw["rollout"].update(prompts_per_step=8)
    raw["eval"].update(every_steps=2, num_prompts=8)
    raw["checkpoint"].update(every_steps=2)
    raw["data"]["synthetic"].update(num_train=40)
    raw["algorithm"]["sparta"].update(sparta)
    if sparta.get("panel") == "llm":
        for player in raw["players"]:
            player["judge_noise"] = 0.0
        raw["rollout"]["engine"]["max_model_len"] = 128
    return validate(config_from_dict(raw))


def sampler_gaps(recipe) -> dict[str, float]:
    """Per player: mean |engine - trainer| log-prob of the engine's own samples (0: in sync)."""
    from tests.recording import engine_gap

    gaps = {}
    for name, player in recipe.tribe.players.items():
        with recipe.tribe.resident(name):  # (algorithm.sparta.offload_idle: its trainer is on the host)
            gaps[name] = engine_gap(player)
    return gaps


def run_tribe(rank, world_size, cfg, stop_after=None):
    from megatron_elo.recipes.sparta import SpartaRecipe
    from tests.recording import measure_after_last_step, recorded_run

    gaps = measure_after_last_step(SpartaRecipe, cfg.trainer.steps, sampler_gaps)  # after the last iteration's syncs
    runner, summary, records = recorded_run(cfg, stop_after)
    recipe = runner.recipe
    weights, held = {}, {name: t for name, t in recipe.trainers().items() if t is not None}  # (this rank's slice's)
    for name, trainer in held.items():
        with recipe.tribe.resident(name):
            weights[name] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    log_rows = recipe.reputation_log.rows if recipe.reputation_log is not None else None  # the driver keeps it
    return (summary, weights, log_rows, [dict(r.extra_metrics) for r in records], gaps.get("value", {}),
            {name: t.step for name, t in held.items()}, {name: t.offloaded is not None for name, t in held.items()})


@pytest.fixture(scope="module")
def straight_tribe(players, tmp_path_factory):  # noqa: F811
    """The uninterrupted one-process tribe run: (its config, its results)."""
    from megatron_elo.parallel.spawn import run_distributed

    cfg = sparta_config(tmp_path_factory.mktemp("straight"), players)
    return cfg, run_distributed(run_tribe, 1, cfg, timeout=900)[0]


@pytest.mark.slow
def test_tribe_trains_every_player_and_a_resumed_run_is_the_same_run(players, tmp_path_factory, straight_tribe):  # noqa: F811
    from megatron_elo.parallel.spawn import run_distributed

    straight = straight_tribe[1]
    resumed_cfg = sparta_config(tmp_path_factory.mktemp("resumed"), players)
    first = run_distributed(run_tribe, 1, resumed_cfg, 3, timeout=900)[0]  # killed after iteration 3: step 2's checkpoint
    second = run_distributed(run_tribe, 1, resumed_cfg, timeout=900)[0]
    summary, weights, log_rows, metrics, gaps, optimizer_steps, _ = straight
    assert first[0] == {"finished": False, "step": 3} and second[0]["finished"]
    for name in weights:  # every player's weights, bitwise
        assert all(torch_equal(second[1][name][k], weights[name][k]) for k in weights[name]), name
    assert second[2] == log_rows and second[5] == optimizer_steps  # reputations after every iteration, optimizer steps
    assert second[0]["reputation"] == summary["reputation"] and second[0]["evals"] == summary["evals"]
    assert [row["step"] for row in log_rows] == [1, 2, 3, 4]
    assert summary["reputation"] != {n: 100.0 for n in weights}  # decided duels moved the reputations
    assert all(steps >= 1 for steps in optimizer_steps.values())  # every player trained on the shared pairs
    assert any(f"loss/{n}" in m for m in metrics for n in weights)
    assert set(gaps) == set(weights) and all(gap < 1e-3 for gap in gaps.values()), gaps  # per player: the engine samples with the trained weights
    per_player = summary["evals"][-1]["per_player"]
    assert set(per_player) == set(weights) and all(0 <= v <= 1 for v in per_player.values())
    last = metrics[-1]
    assert {"label_accuracy/reputation", "label_accuracy/uniform", "panel_agreement", "reputation/strong",
            "reputation_sigma/weak", "duel_win_rate/medium"} <= last.keys()
    assert last["pairs"] + last["duel_ties"] == 8
    run_dir = Path(summary["run_dir"])
    assert {"reputation.png", "reputation_history.csv"} <= {p.name for p in (run_dir / "artifacts").iterdir()}
    exports = {p.name for p in (run_dir / "export_hf").iterdir()}
    assert {"step_00000004", "step_00000004-policy_init", "step_00000004-medium", "step_00000004-strong"} <= exports


@pytest.mark.slow
def test_tribe_on_two_tensor_parallel_ranks_is_the_one_process_run(straight_tribe, tmp_path):
    """Every player's trainer TP = 2 with a TP = 2 colocated engine, over gloo, each trainer offloaded to the host
    between its turns (algorithm.sparta.offload_idle): the driver's duels, panel and reputations shared with the
    other rank, each player's DPO and its sync to its sharded engine, checkpoints written from offloaded trainers:
    the same reputations, duels, evaluations and (to TP's reordered sums) weights as one process. The reference
    opponent's answers come from the one-process run's store, so no server starts."""
    import torch
    from safetensors.torch import load_file

    from megatron_elo.parallel.spawn import run_distributed

    cfg, straight = straight_tribe
    raw = tensor_parallel_twin(cfg, straight[0]["run_dir"], tmp_path)
    raw["algorithm"]["sparta"]["offload_idle"] = True  # each player's trainer on the host between its turns
    driver, other = run_distributed(run_tribe, 2, validate(config_from_dict(raw), world_size=2), timeout=900)
    summary, weights, log_rows, metrics, gaps, optimizer_steps, _ = straight
    assert driver[2] == log_rows and driver[0]["reputation"] == summary["reputation"]  # every iteration's reputations
    assert driver[0]["evals"] == summary["evals"] and driver[5] == other[5] == optimizer_steps
    assert all(driver[6].values()) and all(other[6].values()) and not any(straight[6].values())  # offloaded after the run
    served = {k for k in driver[3][-1] if k.startswith("engine/restarts/")}  # the reference is served in a world
    ours = {k: v for k, v in driver[3][-1].items() if k not in served}
    assert ours.keys() == metrics[-1].keys()  # the last iteration's duels, pairs, panel, losses (nan: nothing to measure)
    assert all(v == metrics[-1][k] or (math.isnan(v) and math.isnan(metrics[-1][k])) for k, v in ours.items()), ours
    assert not (tmp_path / "engine_logs").exists()  # every reference answer came from the store
    assert all(gap < 1e-3 for gap in driver[4].values()), driver[4]  # each sharded engine holds its player's weights
    for name in weights:  # each player's exported HF weights: TP's reordered fp32 sums through its DPO steps (measured: 2.2e-5 at most)
        export = f"step_{cfg.trainer.steps:08d}" + ("" if name == cfg.players[0].name else f"-{name}")
        ours, theirs = (load_file(str(Path(s["run_dir"]) / "export_hf" / export / "model.safetensors")) for s in (driver[0], summary))
        assert ours.keys() == theirs.keys()
        for key, weight in theirs.items():
            torch.testing.assert_close(ours[key], weight, rtol=0, atol=5e-5, msg=f"{name} {key}")


@pytest.mark.slow
def test_tribe_side_by_side_on_two_slices_resumed_is_the_one_process_run(straight_tribe, tmp_path):
    """algorithm.sparta.slices=2 on two ranks: two players on each rank's slice (its own groups and engines), the
    slices answering, judging and training at once, the whole world sharing answers and statistics; killed after
    iteration 3 and resumed from step 2's checkpoint (each slice wrote and reads its own players' shards): every
    player's weights bitwise, the reputations, duels, panel and evaluations of the one-process run."""
    from megatron_elo.parallel.spawn import run_distributed

    cfg, straight = straight_tribe
    summary, weights, log_rows, metrics, gaps, optimizer_steps, _ = straight
    raw = tensor_parallel_twin(cfg, straight[0]["run_dir"], tmp_path)
    raw["parallel"].update(tp=1)
    raw["rollout"]["engine"].update(tp=1, dp=1)
    raw["algorithm"]["sparta"]["slices"] = 2
    sliced = validate(config_from_dict(raw), world_size=2)
    killed = run_distributed(run_tribe, 2, sliced, 3, timeout=900)
    driver, other = run_distributed(run_tribe, 2, sliced, timeout=900)
    assert [k[0] for k in killed] == [{"finished": False, "step": 3}, {"finished": False, "step": 3}]
    names = [p.name for p in cfg.players]
    assert list(driver[1]) == names[:2] and list(other[1]) == names[2:]  # each rank holds its slice's players only
    for name in names:  # bitwise: each player trained on one rank either way
        mine = (driver if name in driver[1] else other)[1][name]
        assert all(torch_equal(mine[k], weights[name][k]) for k in weights[name]), name
    assert driver[2] == log_rows and driver[0]["reputation"] == summary["reputation"]
    assert driver[0]["evals"] == summary["evals"] and {**driver[5], **other[5]} == optimizer_steps
    served = {k for k in driver[3][-1] if k.startswith("engine/restarts/")}
    ours = {k: v for k, v in driver[3][-1].items() if k not in served}
    assert ours.keys() == metrics[-1].keys()  # every player's loss reached the driver
    assert all(v == metrics[-1][k] or (math.isnan(v) and math.isnan(metrics[-1][k])) for k, v in ours.items()), ours
    assert all(gap < 1e-3 for gap in {**driver[4], **other[4]}.values())  # each engine holds its player's weights
    run_dir = Path(driver[0]["run_dir"])
    assert sorted(p.name for p in (run_dir / "export_hf").iterdir()) == sorted(
        f"step_{cfg.trainer.steps:08d}" + ("" if n == names[0] else f"-{n}") for n in names)


@pytest.mark.slow
def test_tribe_on_two_slices_of_two_data_parallel_ranks_is_the_shared_two_rank_run(straight_tribe, tmp_path):
    """Four ranks, two slices of trainer DP 2 with engine DP 2 (a slice's two vLLM replicas independent: vLLM's
    external data parallelism), idle trainers offloaded, resumed from step 2's checkpoint of the two-rank run of
    that layout with every player on both ranks (vLLM's own DP 2): it ends as that run, the same reputations,
    duels, losses and evaluations, every player's weights bitwise. (Not the one-process run: DP 2 leaves an
    odd iteration's last pair out.)"""
    from megatron_elo.parallel.spawn import run_distributed

    cfg, straight = straight_tribe
    raw = tensor_parallel_twin(cfg, straight[0]["run_dir"], tmp_path / "shared")
    raw["parallel"].update(tp=1, dp=2)
    raw["rollout"]["engine"].update(tp=1, dp=2)
    raw["algorithm"]["sparta"]["offload_idle"] = True
    shared = run_distributed(run_tribe, 2, validate(config_from_dict(raw), world_size=2), timeout=900)[0]
    shutil.copytree(tmp_path / "shared" / "opponent_cache", tmp_path / "sliced" / "opponent_cache")
    checkpoint = Path(raw["run_name"]) / "checkpoints" / "step_00000002"  # the shared run's, read by the slices
    shutil.copytree(tmp_path / "shared" / checkpoint, tmp_path / "sliced" / checkpoint)
    raw.update(output_dir=str(tmp_path / "sliced"))
    raw["cluster"]["devices_per_node"] = 4
    raw["algorithm"]["sparta"]["slices"] = 2
    ranks = run_distributed(run_tribe, 4, validate(config_from_dict(raw), world_size=4), timeout=1200)
    driver, names = ranks[0], [p.name for p in cfg.players]
    assert len(driver[3]) == 2  # resumed at step 2: only iterations 3 and 4 ran on the slices
    assert [list(r[1]) for r in ranks] == [names[:2]] * 2 + [names[2:]] * 2  # each slice's ranks: its players
    assert driver[2] == shared[2] and driver[0]["reputation"] == shared[0]["reputation"]
    assert driver[0]["evals"] == shared[0]["evals"] and {**driver[5], **ranks[2][5]} == shared[5]
    last, theirs = driver[3][-1], shared[3][-1]
    assert last.keys() == theirs.keys()
    assert all(v == theirs[k] or (math.isnan(v) and math.isnan(theirs[k])) for k, v in last.items()), last
    assert all(all(r[6].values()) for r in ranks)  # offloaded between turns on every rank
    assert all(gap < 1e-3 for r in ranks for gap in r[4].values())
    for name in names:  # each slice's DP ranks hold the same weights: its first rank's, bitwise
        mine = ranks[0 if name in names[:2] else 2][1][name]
        assert all(torch_equal(mine[k], shared[1][name][k]) for k in mine), name


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.mark.slow
def test_llm_panel_scores_with_each_players_engine(players, tmp_path):  # noqa: F811
    from megatron_elo.parallel.spawn import run_distributed

    template = tmp_path / "score.txt"
    template.write_text("{question}{answer} ? ")  # the task's alphabet only (its tokenizer has no letters)
    cfg = sparta_config(tmp_path, players, panel="llm", score_template=str(template), score_max_new_tokens=8)
    cfg.trainer.steps, cfg.eval.num_prompts = 2, 0
    summary, _, log_rows, metrics, _, _, _ = run_distributed(run_tribe, 1, cfg, timeout=900)[0]
    assert summary["finished"] and len(log_rows) == 2
    for m in metrics:  # 8 duels, 2 answers each, scored by the 2 players not in the duel: 32 judge prompts
        assert m["panel/parsed"] + m["panel/unparsed"] + m["panel/overlong"] == 32
        assert m["pairs"] + m["duel_ties"] == 8
