"""The pair recipes run by the runner on the tiny CPU setup: online (INPO against the Elo pool, DPO in a
tournament) and offline (DPO on a pair file, no engine at all); resumed runs equal uninterrupted ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_elo.config.loader import config_from_dict, read_yaml
from megatron_elo.config.validate import validate
from megatron_elo.parallel.spawn import run_distributed
from tests.test_loop import players  # noqa: F401  (the module's tiny players, made once)

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

DPO = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu_dpo.yaml"


def pairs_config(root: Path, players: Path, **pairs) -> object:  # noqa: F811
    """tiny_cpu_dpo.yaml shrunk: the weak players, 4 steps, eval and save every 2."""
    raw = read_yaml(DPO)
    raw.update(output_dir=str(root), tracking={"backend": "none"})
    raw["model"]["path"] = str(players / "policy_init")
    for opponent in raw["opponents"]:
        opponent["model"]["path"] = str(players / opponent["name"])
    raw["prepare"]["snapshots"] = [{"path": str(players / n), "sft_steps": s}
                                   for n, s in (("weak", 3), ("policy_init", 5), ("medium", 8), ("strong", 12))]
    raw["trainer"].update(steps=4, lr=1e-3, lr_schedule="constant", micro_batch_size=8, global_batch_size=16)
    raw["rollout"].update(prompts_per_step=8, n_per_prompt=4)
    raw["eval"].update(every_steps=2, num_prompts=8)
    raw["checkpoint"].update(every_steps=2)
    raw["data"]["synthetic"].update(num_train=40)
    raw["algorithm"]["pairs"].update(pairs)
    return validate(config_from_dict(raw))


def run_pairs(rank, world_size, cfg, stop_after=None, forbid_engines=False):
    from tests.recording import recorded_run

    if forbid_engines:  # an offline run without evaluation must not start any engine
        import megatron_elo.players.trained as trained

        def no_engine(*args, **kwargs):
            raise AssertionError("an engine was started")

        trained.RolloutEngine = no_engine
    runner, summary, records = recorded_run(cfg, stop_after)
    recipe = runner.recipe
    weights = {n: p.detach().clone() for n, p in recipe.trainer.model.named_parameters()}
    trained = [stats.metrics for record in records for stats in record.train]
    pairs = sum(record.extra_metrics.get("pairs/count", 0.0) for record in records)
    lrs = {record.step: [stats.lr for stats in record.train] for record in records}
    return (summary, weights, runner.run_state.elo_history, recipe.trainer.step, trained[-1] if trained else {},
            dict(records[-1].extra_metrics) if records else {}, pairs, lrs)


def straight_and_resumed(cfg_of):
    straight = run_distributed(run_pairs, 1, cfg_of("straight"), timeout=900)[0]
    resumed_cfg = cfg_of("resumed")
    first = run_distributed(run_pairs, 1, resumed_cfg, 3, timeout=900)[0]  # killed after step 3: step 2's checkpoint
    second = run_distributed(run_pairs, 1, resumed_cfg, timeout=900)[0]
    return straight, first, second


def assert_resumed_equals_straight(straight, first, second) -> None:
    assert first[0] == {"finished": False, "step": 3}
    assert second[0]["finished"] and second[0]["step"] == straight[0]["step"] == 4
    assert all(torch.equal(second[1][k], straight[1][k]) for k in straight[1])
    assert second[2] == straight[2] and second[3] == straight[3]  # Elo history, optimizer steps


def test_online_inpo_against_the_elo_pool_resumes_exactly(players, tmp_path_factory):  # noqa: F811
    """INPO (both references: the frozen initial model and the iteration's start), pairs from games against
    opponents drawn by Elo: the ratings move, pairs are made and trained on, and a resumed run is the same run."""
    def cfg_of(name):
        return pairs_config(tmp_path_factory.mktemp(name), players, loss="inpo", beta=0.5, games="opponents",
                            rule="all_decided")

    straight, first, second = straight_and_resumed(cfg_of)
    assert_resumed_equals_straight(straight, first, second)
    summary, _, elo_history, optimizer_steps, train_metrics, extra, pairs, _ = straight
    assert pairs > 0 and optimizer_steps >= 1  # the test's players are barely trained: few decided differences
    assert {"pair_loss", "rewards/margin", "rewards/accuracy"} <= train_metrics.keys()
    assert elo_history[-1]["policy"] != 1000.0  # every decided game moved the ratings
    assert "no_signal_groups" in extra and 0 <= extra["reward_mean"] <= 1


def test_online_dpo_in_a_tournament_trains_on_its_pairs(players, tmp_path):  # noqa: F811
    # the demo's settings (tournament, best_vs_worst, previous iterate); the test's barely trained players tie
    # most games, so the judge tosses coins in one order: every game decided
    cfg = pairs_config(tmp_path, players, rule="all_decided")  # 4 pairs a prompt: 32 an iteration, 4 optimizer steps
    cfg.judge.noise, cfg.judge.swap_positions = 1.0, False
    summary, weights, elo_history, optimizer_steps, train_metrics, extra, pairs, lrs = run_distributed(
        run_pairs, 1, cfg, timeout=900)[0]
    assert summary["finished"] and pairs > 0 and optimizer_steps > 4  # several optimizer steps in some iterations
    # the LR schedule runs over iterations: warmup_steps=2 -> half the LR in iteration 0, the whole after it
    assert all(lr == 0.5e-3 for lr in lrs[1]) and all(lr == 1e-3 for step in (2, 3, 4) for lr in lrs[step])
    assert extra["pairs/decided_games"] == 8 * (3 + 1) and extra["pairs/undecided_games"] == 0  # 4 samples: 3 + 1 games
    assert elo_history[-1]["policy"] == 1000.0  # games among its own samples never move the ratings
    assert summary["win_rate_after"] is not None


def arithmetic_pairs(path: Path, count: int = 64) -> str:
    """Addition problems with the right answer chosen over a wrong one (the task's prompt layout)."""
    from megatron_elo.tasks.arithmetic import make_prompts

    prompts = make_prompts(count, seed=5)
    rows = [{"id": p.prompt_id, "prompt": p.text, "chosen": p.reference, "rejected": str(int(p.reference) + 3)}
            for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_offline_dpo_on_a_pair_file_needs_no_engine_and_resumes_exactly(players, tmp_path_factory):  # noqa: F811
    pair_file = arithmetic_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")

    def cfg_of(name):
        cfg = pairs_config(tmp_path_factory.mktemp(name), players)
        raw = json.loads(json.dumps(__import__("dataclasses").asdict(cfg)))
        raw["algorithm"].update(name="pairs_offline")
        raw["algorithm"]["pairs"].update(path=pair_file, reference="initial")
        raw["eval"]["num_prompts"] = 0
        raw["trainer"]["steps"] = 4
        return validate(config_from_dict(raw))

    straight = run_distributed(run_pairs, 1, cfg_of("straight"), None, True, timeout=900)[0]
    resumed_cfg = cfg_of("resumed")
    first = run_distributed(run_pairs, 1, resumed_cfg, 3, True, timeout=900)[0]
    second = run_distributed(run_pairs, 1, resumed_cfg, None, True, timeout=900)[0]
    assert_resumed_equals_straight(straight, first, second)
    summary, _, _, optimizer_steps, train_metrics, extra, _, _ = straight
    assert optimizer_steps == 4 and summary["win_rate_after"] is None
    assert train_metrics["rewards/margin"] > 0  # the policy moved toward the right answers, against the initial model
    assert extra["pairs/epoch"] == 0.0  # 4 steps x 8 pairs of 64
