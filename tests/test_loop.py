"""The recipes run by the runner on the tiny CPU setup: a resumed run equals an uninterrupted one
(bitwise weights, Elo ratings, data position), also with judging overlapped with the update; the loop
on 2 ranks (trainer TP / PP / DP = 2 with its colocated engine) equals the one-process run; MLflow
holds params / metrics / artifacts in one run across the resume, each step once; a crash marks the
run FAILED; `eval` works on an LLM-judged config and on a DP=2 engine config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_elo.config.loader import config_from_dict, config_to_dict, read_yaml
from megatron_elo.config.validate import validate
from megatron_elo.parallel.spawn import run_distributed

pytest.importorskip("vllm")
pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow  # whole training runs in spawned processes: minutes each on 2 cores

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def _byte_arch():
    """The tiny architecture of players (and a judge) that read free text through a byte tokenizer."""
    from megatron_elo.config.schema import ArchConfig

    return ArchConfig(family="qwen2", num_layers=1, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                      num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=1024, tie_word_embeddings=True)


def small_config(root: Path, players: Path, *, overlap_judging: bool = False, **trainer):
    """tiny_cpu.yaml shrunk: weakly pre-trained players under ``players``, 4 steps, eval and save every 2."""
    raw = read_yaml(TINY)
    raw["rollout"]["overlap_judging"] = overlap_judging
    raw["output_dir"] = str(root)
    raw["model"]["path"] = str(players / "policy_init")
    for opponent in raw["opponents"]:
        opponent["model"]["path"] = str(players / opponent["name"])
    raw["prepare"]["snapshots"] = [{"path": str(players / n), "sft_steps": s}
                                   for n, s in (("weak", 3), ("policy_init", 5), ("medium", 8), ("strong", 12))]
    raw["trainer"].update(steps=4, **trainer)
    raw["eval"].update(every_steps=2, num_prompts=16)
    raw["checkpoint"].update(every_steps=2)
    raw["data"]["synthetic"].update(num_train=40)
    return validate(config_from_dict(raw))


def run_loop(rank, world_size, cfg, stop_after=None, crash_at=None):
    from megatron_elo.recipes.games import GamesRecipe
    from megatron_elo.runner.runner import Runner

    runner = Runner(cfg, stop_after=stop_after)
    if crash_at is not None:
        original = GamesRecipe.step

        def crashing(self, step):
            if step == crash_at:
                raise RuntimeError("simulated crash")
            return original(self, step)

        GamesRecipe.step = crashing
        try:
            runner.run()
        except RuntimeError as err:
            return {"crashed": str(err)}
    summary = runner.run()
    recipe = runner.recipe
    weights = {n: p.detach().clone() for n, p in recipe.trainer.model.named_parameters()}
    position = recipe.prompts.state_dict() if recipe.prompts else None  # the prompt source: the driver's
    return summary, weights, position, runner.run_state.elo_history, recipe.trainer.step


@pytest.fixture(scope="module")
def players(tmp_path_factory):
    from megatron_elo.config.loader import load_config
    from megatron_elo.parallel.world import World
    from megatron_elo.players.prepare import prepare_players

    root = tmp_path_factory.mktemp("players")
    prepare_players(small_config(root, root), World(rank=0, size=1, driver_group=None, timeout_minutes=1))
    assert load_config(TINY).prepare is not None
    return root


@pytest.fixture(scope="module")
def straight_and_resumed(players, tmp_path_factory):
    straight_cfg = small_config(tmp_path_factory.mktemp("straight"), players)
    resumed_cfg = small_config(tmp_path_factory.mktemp("resumed"), players)
    straight = run_distributed(run_loop, 1, straight_cfg, timeout=900)[0]
    # killed after step 3: the newest checkpoint is step 2's, so the resumed process replays step 3
    first_half = run_distributed(run_loop, 1, resumed_cfg, 3, timeout=900)[0]
    second_half = run_distributed(run_loop, 1, resumed_cfg, timeout=900)[0]
    return straight, first_half, second_half, resumed_cfg


def test_resumed_run_equals_uninterrupted(straight_and_resumed):
    straight, first_half, resumed, _ = straight_and_resumed
    assert first_half[0] == {"finished": False, "step": 3}
    assert resumed[0]["finished"] and resumed[0]["step"] == straight[0]["step"] == 4
    assert resumed[0]["elo"] == straight[0]["elo"]
    assert resumed[2] == straight[2]  # data position
    assert resumed[3] == straight[3]  # Elo history, step by step
    assert all(torch.equal(resumed[1][k], straight[1][k]) for k in straight[1])
    assert resumed[0]["win_rate_after"] == straight[0]["win_rate_after"]
    # compare's per-step trace: restored with the checkpoint, one row per step, every prompt counted
    assert resumed[0]["trace"] == straight[0]["trace"] and [row["step"] for row in straight[0]["trace"]] == [1, 2, 3, 4]
    assert all(sum(row["prompts"].values()) == straight_and_resumed[3].rollout.prompts_per_step for row in straight[0]["trace"])


def copy_answer_store(straight_and_resumed, root: Path) -> None:
    """The one-process run's opponent answers into ``root`` (a run there starts fewer opponent engines)."""
    import shutil

    shutil.copytree(Path(straight_and_resumed[0][0]["run_dir"]).parent / "opponent_cache", root / "opponent_cache")


def two_rank_config(straight_and_resumed, root: Path, parallel: dict, engine: dict, **eval_overrides):
    """The one-process run's config on 2 ranks in ``root``, with that run's opponent-answer cache."""
    import shutil

    straight, _, _, resumed_cfg = straight_and_resumed
    shutil.copytree(Path(straight[0]["run_dir"]).parent / "opponent_cache", root / "opponent_cache")
    raw = config_to_dict(resumed_cfg)
    raw.update(output_dir=str(root), run_name="two_ranks")
    raw["parallel"].update(parallel)
    raw["rollout"]["engine"].update(engine)
    raw["cluster"]["devices_per_node"] = 2
    raw["eval"].update(eval_overrides)
    return validate(config_from_dict(raw), world_size=2)


@pytest.mark.parametrize("parallel, engine", [({"dp": 2}, {"tp": 1, "dp": 2}), ({"tp": 2}, {"tp": 2, "dp": 1}),
                                              ({"pp": 2}, {"tp": 1, "dp": 2})], ids=["dp2-engine_dp2", "tp2-engine_tp2", "pp2-engine_dp2"])
def test_two_ranks_run_the_loop_like_one(straight_and_resumed, tmp_path, parallel, engine):
    """Trainer TP / PP / DP = 2 with its colocated engine in a 2-process world: the same Elo history,
    held-out win rates and exported weights as the one-process run (per-prompt seeds, global loss
    normaliser). Opponents are served in a world (launch=auto); their answers come from the
    one-process run's cache, so no server starts."""
    from safetensors.torch import load_file

    straight = straight_and_resumed[0]
    driver, other = run_distributed(run_loop, 2, two_rank_config(straight_and_resumed, tmp_path, parallel, engine), timeout=900)
    assert other[0] == {"finished": True, "step": 4, "rank": 1}
    assert driver[3] == straight[3]  # Elo history, step by step
    assert driver[0]["evals"] == straight[0]["evals"]  # held-out win rates at every evaluation
    assert not (tmp_path / "engine_logs").exists()  # every opponent answer came from the cache
    ours, theirs = (load_file(str(Path(s["export"]) / "model.safetensors")) for s in (driver[0], straight[0]))
    for name, weight in theirs.items():
        torch.testing.assert_close(ours[name], weight, rtol=0, atol=1e-6)


def test_overlapped_judging_trains_every_batch_one_step_off_policy_and_resumes_exactly(players, tmp_path_factory,
                                                                                       straight_and_resumed):
    """rollout.overlap_judging: step t's games are judged while step t-1's batch trains; every batch is
    trained (4 optimizer steps: none in step 1, two in step 4), the result differs from the on-policy run,
    and a run killed after step 3 (pending batch in step 2's checkpoint) resumes to the same weights, Elo
    history and evaluations."""
    import shutil

    on_policy = straight_and_resumed[0]
    straight_cfg = small_config(tmp_path_factory.mktemp("overlap_straight"), players, overlap_judging=True)
    resumed_cfg = small_config(tmp_path_factory.mktemp("overlap_resumed"), players, overlap_judging=True)
    for cfg in (straight_cfg, resumed_cfg):  # the on-policy run's opponent answers: fewer engines to start
        shutil.copytree(Path(on_policy[0]["run_dir"]).parent / "opponent_cache", Path(cfg.output_dir) / "opponent_cache")
    straight = run_distributed(run_loop, 1, straight_cfg, timeout=900)[0]
    assert run_distributed(run_loop, 1, resumed_cfg, 3, timeout=900)[0][0] == {"finished": False, "step": 3}
    pending = Path(resumed_cfg.output_dir) / resumed_cfg.run_name / "checkpoints" / "step_00000002" / "state_rank0.pt"
    assert torch.load(pending, weights_only=False)["pending"]["update"] is not None
    resumed = run_distributed(run_loop, 1, resumed_cfg, timeout=900)[0]
    assert straight[4] == resumed[4] == 4  # optimizer steps
    assert resumed[3] == straight[3] and resumed[0]["evals"] == straight[0]["evals"]
    assert all(torch.equal(resumed[1][k], straight[1][k]) for k in straight[1])
    assert any(not torch.equal(on_policy[1][k], straight[1][k]) for k in straight[1])


def test_a_corrupt_newest_checkpoint_is_skipped_and_the_run_ends_as_an_uninterrupted_one(players, tmp_path,
                                                                                         straight_and_resumed):
    """Checkpoints every step, killed after step 3, step 3's shard truncated: the restart skips it (warning
    naming the file), resumes from step 2 and ends with the uninterrupted run's weights, Elo history and
    evaluations; naming the corrupt checkpoint explicitly (checkpoint.resume=<dir>) stops with the problem."""
    import dataclasses
    import shutil

    straight = straight_and_resumed[0]
    cfg = small_config(tmp_path, players)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=1))
    shutil.copytree(Path(straight[0]["run_dir"]).parent / "opponent_cache", tmp_path / "opponent_cache")
    assert run_distributed(run_loop, 1, cfg, 3, timeout=900)[0][0] == {"finished": False, "step": 3}
    newest = tmp_path / cfg.run_name / "checkpoints" / "step_00000003"
    shard = newest / "shard_tp0_pp0.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    explicit = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume=str(newest)))
    with pytest.raises(RuntimeError, match=r"checkpoint.resume=.*step_00000003: .*shard_tp0_pp0.pt: its SHA-256 is not"):
        run_distributed(run_loop, 1, explicit, timeout=900)
    resumed = run_distributed(run_loop, 1, cfg, timeout=900)[0]
    assert resumed[3] == straight[3] and resumed[0]["evals"] == straight[0]["evals"]
    assert all(torch.equal(resumed[1][k], straight[1][k]) for k in straight[1])


def test_an_engine_replica_without_prompts_does_not_hang(straight_and_resumed, tmp_path):
    """One held-out prompt over two engine replicas: vLLM's DP replicas step together, so the one
    without a prompt still generates (a repeated prompt, dropped); without that the run hangs."""
    cfg = two_rank_config(straight_and_resumed, tmp_path, {"dp": 2}, {"tp": 1, "dp": 2}, num_prompts=1)
    driver, _ = run_distributed(run_loop, 2, cfg, timeout=600)
    assert driver[0]["finished"] and len(driver[0]["evals"]) == 3  # start, step 2, end
    assert driver[0]["evals"][0]["per_opponent"].keys() == {"weak", "medium", "strong"}


def evaluate_checkpoint(rank, world_size, cfg, checkpoint):
    from megatron_elo.runner.runner import evaluate_checkpoint

    return evaluate_checkpoint(cfg, checkpoint)


def test_eval_of_a_checkpoint_matches_the_runs_own(straight_and_resumed, players, tmp_path):
    """Sampled evaluation (tiny_cpu.yaml's eval.temperature=1) is seeded alike every time: a checkpoint
    evaluated in a new process scores what the run logged for it."""
    straight, _, resumed, cfg = straight_and_resumed
    assert cfg.eval.temperature > 0 and cfg.eval.samples_per_prompt > 1
    final = run_distributed(evaluate_checkpoint, 1, cfg, None, timeout=600)[0]  # the newest checkpoint
    assert final.step == 4 and final.win_rate == resumed[0]["win_rate_after"]
    untrained = run_distributed(evaluate_checkpoint, 1, small_config(tmp_path / "sampled", players), None, timeout=600)[0]
    assert untrained.step == 0 and untrained.win_rate == straight[0]["win_rate_before"]
    assert untrained.per_opponent.keys() == {"weak", "medium", "strong"}


def hf_greedy_answers(model_dir: Path, prompts) -> list[str]:
    """transformers' greedy answers to the addition prompts: the reference for the engine's."""
    import transformers

    from megatron_elo.tasks.arithmetic import CharTokenizer

    tokenizer, model = CharTokenizer(), transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    answers = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode_prompt(prompt)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:].tolist()))
    return answers


def test_eval_with_a_two_replica_policy_engine_matches_the_runs_own(straight_and_resumed, tmp_path):
    """`eval` of a config whose policy engine has DP=2: under 2 ranks (one engine replica each) and in
    one process (one replica) it scores the final checkpoint as the run did."""
    straight = straight_and_resumed[0]
    cfg = two_rank_config(straight_and_resumed, tmp_path, {"dp": 2}, {"tp": 1, "dp": 2})
    checkpoint = Path(straight[0]["run_dir"]) / "checkpoints" / "step_00000004"
    on_two = run_distributed(evaluate_checkpoint, 2, cfg, checkpoint, timeout=600)
    on_one = run_distributed(evaluate_checkpoint, 1, cfg, checkpoint, timeout=600)[0]
    assert on_two[0] == on_two[1] == on_one
    assert on_one.step == 4 and on_one.win_rate == straight[0]["win_rate_after"]
    assert not (tmp_path / "engine_logs").exists()  # the opponents' answers came from the store


def test_greedy_eval_scores_what_transformers_answers(players, tmp_path):
    """eval.temperature=0: the greedy policy against each opponent's greedy answer, judged exactly;
    the win rate equals one computed from transformers' greedy answers of the same checkpoints."""
    from megatron_elo.data.source import load_prompt_sets
    from megatron_elo.tasks.arithmetic import answer_error

    cfg = small_config(tmp_path, players)
    raw = config_to_dict(cfg)
    raw["eval"].update(temperature=0.0, samples_per_prompt=1)
    cfg = validate(config_from_dict(raw))
    result = run_distributed(evaluate_checkpoint, 1, cfg, None, timeout=600)[0]
    prompts = load_prompt_sets(cfg)[1]
    policy = hf_greedy_answers(players / "policy_init", prompts)
    expected = {}
    for name in ("weak", "medium", "strong"):
        theirs = hf_greedy_answers(players / name, prompts)
        errors = [(answer_error(a, p.reference), answer_error(b, p.reference)) for a, b, p in zip(policy, theirs, prompts, strict=True)]
        expected[name] = sum(1.0 if a < b else 0.0 if a > b else 0.5 for a, b in errors) / len(prompts)
    assert result.per_opponent == pytest.approx(expected, abs=1e-12)
    assert result.exact == pytest.approx(sum(a == p.reference for a, p in zip(policy, prompts, strict=True)) / len(prompts))


def test_mlflow_run_holds_everything_once(straight_and_resumed):
    from mlflow.tracking import MlflowClient

    _, _, resumed, cfg = straight_and_resumed
    uri = resumed[0]["mlflow"].split(" ")[0]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert len(runs) == 1  # the resumed process logged into the same run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.lr"] == str(cfg.trainer.lr) and "opponents.0.name" in run.data.params
    for key in ("loss", "kl", "entropy", "clip_fraction", "reward_mean", "elo/policy", "elo/medium", "p_select/strong",
                "invalid_verdicts", "tokens_per_s", "time/generate", "time/opponent", "time/judge", "time/train",
                "time/sync", "eval/win_rate", "eval/win_rate_ci95", "no_signal_groups"):
        assert key in run.data.metrics, key
    # step 3 ran twice (before the kill and after the resume from step 2): its points are there once
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/win_rate")] == [0, 2, 4]
    # the engine samples with the trainer's weights after every sync: fp32 numerics only, far below the threshold
    gaps = [m.value for m in client.get_metric_history(run.info.run_id, "sync/logprob_diff_max")]
    assert len(gaps) == 4 and max(gaps) < 1e-4 < cfg.rollout.stale_weights_threshold
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"elo_history.csv", "elo_ratings.png", "sample_games.csv", "resolved_config.yaml", "export_hf"} <= artifacts
    export = Path(resumed[0]["export"])
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()


def test_a_crash_marks_the_run_failed(players, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = small_config(tmp_path, players)
    assert run_distributed(run_loop, 1, cfg, None, 1, timeout=900)[0] == {"crashed": "simulated crash"}
    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def llm_judged_run(rank, world_size, cfg, config_file):
    """Train, then `megatron-elo eval` its final checkpoint (the CLI, in this fresh process)."""
    import contextlib
    import io

    from megatron_elo.cli import main
    from megatron_elo.runner.runner import Runner

    runner = Runner(cfg)
    summary = runner.run()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["eval", str(config_file)])
    return summary, runner.recipe.judge.stats, runner.run_state.elo_history, code, printed.getvalue()


def test_the_loop_and_eval_run_with_an_llm_judge_in_its_own_engine(tmp_path):
    """judge.kind=llm on free-text prompts without references: a tiny judge model with a byte tokenizer
    in its own vLLM engine decides the training games and the held-out ones by log-prob verdicts (both
    orders); every game is judged, ratings move, metrics are logged, and `megatron-elo eval` of the final
    checkpoint (a new LLM judge engine) prints the win rate the run logged for it."""
    import yaml
    from mlflow.tracking import MlflowClient

    from megatron_elo.models.tiny import lift_output_tokens, make_tiny_hf_model, make_tiny_tokenizer

    raw = file_prompts_config(tmp_path, references=False)
    make_tiny_hf_model(_byte_arch(), tmp_path / "judge", seed=5, init_std=0.3)
    make_tiny_tokenizer(tmp_path / "judge")
    lift_output_tokens(tmp_path / "judge")  # one-token verdicts need a letter among the judge's likeliest tokens
    raw["judge"] = {"kind": "llm", "model": {"path": str(tmp_path / "judge"), "dtype": "fp32"}, "logprob_verdicts": True,
                    "swap_positions": True, "engine": {**raw["rollout"]["engine"], "max_model_len": 1024}}
    raw.update(tracking={"backend": "mlflow", "experiment": "llm-judged"}, data={**raw["data"], "loader": "default"})
    raw["trainer"]["steps"], raw["checkpoint"] = 2, {"every_steps": 0, "export_hf": False}
    config_file = tmp_path / "llm_judged.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    cfg = validate(config_from_dict(raw))
    summary, stats, elo_history, code, printed = run_distributed(llm_judged_run, 1, cfg, config_file, timeout=900)[0]
    training_games = cfg.rollout.prompts_per_step * cfg.rollout.n_per_prompt * cfg.trainer.steps
    eval_games = 2 * cfg.eval.num_prompts * cfg.eval.samples_per_prompt  # before and after, one opponent
    assert stats.games == training_games + eval_games and stats.invalid == 0 and stats.failed == 0
    assert elo_history[-1] != elo_history[0] and summary["exact_after"] != summary["exact_after"]  # NaN: no references
    assert code == 0 and f"step 2: held-out win rate {summary['win_rate_after']:.3f}" in printed
    client = MlflowClient(f"sqlite:///{(tmp_path / 'runs').resolve() / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("llm-judged").experiment_id])[0]
    assert run.data.metrics["judge/invalid_rate"] == 0.0 and "judge/order_flip_rate" in run.data.metrics


def test_opponent_answers_do_not_depend_on_what_else_is_asked(players, tmp_path):
    assert run_distributed(opponent_answers_alone_and_together, 1, small_config(tmp_path, players), timeout=600)[0]


def opponent_answers_alone_and_together(rank, world_size, cfg):
    import shutil

    from megatron_elo.players.frozen import FrozenPlayers
    from megatron_elo.tasks.arithmetic import make_prompts

    prompts = make_prompts(6, seed=1, max_operand=20)
    together = FrozenPlayers.from_config(cfg, world_size=1).answers("medium", prompts)
    shutil.rmtree(Path(cfg.output_dir) / "opponent_cache")  # no stored answers: regenerate one at a time
    alone = {}
    fresh = FrozenPlayers.from_config(cfg, world_size=1)
    for p in prompts[::-1]:
        alone.update(fresh.answers("medium", [p]))
    return all(alone[k].text == together[k].text for k in together)


def test_compare_runs_every_method_and_tabulates(players, tmp_path, capsys):
    """`megatron-elo compare` on a 2-step budget: one child run per method, a table, files, an MLflow run."""
    import yaml

    from megatron_elo.analysis.compare_report import steps_to_target
    from megatron_elo.cli import load_and_validate, main
    from megatron_elo.compare import child_config, compare, config_differences

    cfg = small_config(tmp_path, players)
    config_file = tmp_path / "small.yaml"
    raw = yaml.safe_load(open(TINY))
    raw.update(output_dir=str(tmp_path / "out"), model={**raw["model"], "path": cfg.model.path})
    for opponent, configured in zip(raw["opponents"], cfg.opponents, strict=True):
        opponent["model"]["path"] = configured.model.path
    raw["prepare"]["snapshots"] = [{"path": s.path, "sft_steps": s.sft_steps} for s in cfg.prepare.snapshots]
    raw["trainer"]["steps"], raw["eval"] = 2, {"every_steps": 1, "num_prompts": 8}
    raw["data"]["synthetic"]["num_train"] = 40
    config_file.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(config_file), "--seeds", "1", "--target", "0.0"]) == 0
    out = capsys.readouterr().out
    for method in ("point", "static_pairwise", "elo_evolve"):
        assert f"| {method} |" in out
        assert (tmp_path / "out" / f"compare_{method}_s1234" / "summary.json").is_file()
    assert (tmp_path / "out" / "compare.md").read_text().strip() in out
    # Finished runs are reused only for the config they were trained with.
    same, changed = load_and_validate(str(config_file), []), load_and_validate(str(config_file), ["trainer.lr=1e-3"])
    for method in ("point", "static_pairwise", "elo_evolve"):
        resolved = (tmp_path / "out" / f"compare_{method}_s1234" / "resolved_config.yaml").read_text()
        assert config_differences(child_config(same, method, 1234), resolved) == []
    with pytest.raises(ValueError, match=r"compare_point_s1234 is a finished run of another config \(trainer.lr differ\)"):
        compare(changed, str(config_file), ["trainer.lr=1e-3"], seeds=1, target=0.0)
    assert steps_to_target([{"step": 0, "win_rate": 0.3}, {"step": 5, "win_rate": 0.5}], 0.4) == 5
    assert steps_to_target([{"step": 0, "win_rate": 0.3}], 0.4) is None


def file_prompts_run(rank, world_size, cfg):
    from megatron_elo.data.loader import PromptLoader
    from megatron_elo.data.source import PromptSource, load_prompt_sets
    from megatron_elo.data.tokenizer import player_tokenizer
    from megatron_elo.runner.runner import Runner

    default_order = PromptLoader(load_prompt_sets(cfg)[0], seed=cfg.seed, shuffle=True)
    expected = [[p.prompt_id for p in default_order.next_batch(cfg.rollout.prompts_per_step)] for _ in range(cfg.trainer.steps)]
    asked, original = [], PromptSource.next_batch

    def recording(self, size):
        asked.append(original(self, size))
        return asked[-1]

    PromptSource.next_batch = recording
    summary = Runner(cfg).run()
    templated = [player_tokenizer(cfg.data, cfg.model).encode_prompt(p) for batch in asked for p in batch.prompts]
    policy_ids = [list(ids) for batch in asked for ids in batch.token_ids]
    return summary, [[p.prompt_id for p in batch.prompts] for batch in asked], expected, policy_ids, templated


def file_prompts_config(tmp_path: Path, *, references: bool = True) -> dict:
    """A raw config training a tiny byte-tokenizer policy on jsonl prompts (held out: parquet), free text
    with a system prompt, static pairwise against one rival of its own tokenizer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from megatron_elo.models.tiny import make_tiny_hf_model, make_tiny_tokenizer

    for name, seed in (("policy", 1), ("rival", 2)):
        make_tiny_hf_model(_byte_arch(), tmp_path / name, seed=seed)
        make_tiny_tokenizer(tmp_path / name)
    rows = [{"id": f"q{i}", "question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(f'{{"id": "{r["id"]}", "question": "{r["question"]}", "answer": "{r["answer"]}"}}\n'
                                                  for r in rows[:8]))
    pq.write_table(pa.Table.from_pylist(rows[8:]), tmp_path / "eval.parquet")
    raw = read_yaml(TINY)
    engine = {**raw["rollout"]["engine"], "max_model_len": 256}
    raw.update(output_dir=str(tmp_path / "runs"), prepare=None, tracking={"backend": "none"})
    raw["model"] = {"path": str(tmp_path / "policy"), "dtype": "fp32"}
    raw["opponents"] = [{"name": "rival", "model": {"path": str(tmp_path / "rival"), "dtype": "fp32"}, "engine": engine,
                         "max_new_tokens": 4}]
    raw["algorithm"] = {"name": "static_pairwise", "static_opponent": "rival"}
    raw["rollout"].update(prompts_per_step=4, n_per_prompt=2, max_new_tokens=4, max_prompt_tokens=128, engine=engine)
    raw["trainer"].update(steps=3, global_batch_size=8, micro_batch_size=8)
    raw["eval"] = {"every_steps": 0, "num_prompts": 4}
    raw["checkpoint"] = {"every_steps": 0, "export_hf": False}
    raw["data"] = {"format": "jsonl", "train_path": str(tmp_path / "train.jsonl"), "eval_path": str(tmp_path / "eval.parquet"),
                   "prompt_field": "question", "system_prompt": "Add.", "loader": "dali",
                   **({"reference_field": "answer"} if references else {})}
    return raw


def test_the_loop_trains_on_prompt_files_with_chat_templates_through_dali(tmp_path):
    """data.format=jsonl (train) / parquet (held out), free-text chat prompts with a system prompt,
    players with their own byte-level tokenizers and chat templates, the DALI loader (pre-tokenized
    shards written on first use): the run trains, asks the default loader's batches, and the ids it
    feeds the policy are the chat-templated ones."""
    raw = file_prompts_config(tmp_path)
    cfg = validate(config_from_dict(raw))
    summary, asked, expected, policy_ids, templated = run_distributed(file_prompts_run, 1, cfg, timeout=900)[0]
    assert summary["finished"] and summary["step"] == 3
    assert asked == expected  # the DALI loader's batches are the default loader's, epoch crossing included
    assert policy_ids == templated  # the pre-tokenized ids are the chat-templated ones
    assert (tmp_path / "runs" / "prompt_tokens" / "offsets.npy").is_file()


def test_the_point_recipe_trains_on_a_reward_models_scores(players, tmp_path, straight_and_resumed):
    """algorithm.reward_model: the point baseline's rewards are a local sequence classifier's scores of
    each answer (the games' recorded scores equal the model's own output on them, through transformers),
    while evaluation still plays pairs with the exact checker."""
    import csv

    import transformers

    from tests.test_judge import make_tiny_reward_model

    rm_dir = make_tiny_reward_model(tmp_path / "rm")
    copy_answer_store(straight_and_resumed, tmp_path)  # the held-out games' opponent answers
    raw = config_to_dict(small_config(tmp_path, players))
    raw["algorithm"].update(name="point", reward_model={"path": str(rm_dir), "dtype": "fp32"})
    raw["trainer"]["steps"], raw["eval"]["every_steps"] = 2, 0
    summary = run_distributed(run_loop, 1, validate(config_from_dict(raw)), timeout=900)[0][0]
    assert summary["finished"] and len(summary["evals"]) == 2
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "artifacts" / "sample_games.csv")))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(rm_dir))
    for row in rows[:6]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["policy_answer"]}], tokenize=False)
        with torch.no_grad():
            expected = model(torch.tensor([tokenizer.encode(text, add_special_tokens=False)])).logits[0, 0].item()
        assert float(row["verdict"]) == pytest.approx(expected, abs=1e-5) and row["opponent"] == ""


def run_without_weight_sync(rank, world_size, cfg):
    """The loop with every weight sync after the first step skipped on purpose."""
    from megatron_elo.players.trained import TrainedPlayer

    TrainedPlayer.sync_weights = lambda self: None
    try:
        run_loop(rank, world_size, cfg)
    except RuntimeError as err:
        return f"{type(err).__name__}: {err}"
    return "finished"


def test_a_skipped_weight_sync_is_caught_at_run_time(players, tmp_path, straight_and_resumed):
    """rollout.stale_weights_action=stop: with the weight sync skipped, step 2's samples come from step 1's
    weights and the engine-vs-trainer log-prob gap stops the run, naming the setting (a normal run stays
    some orders of magnitude under it: test_mlflow_run_holds_everything_once)."""
    import dataclasses

    cfg = small_config(tmp_path, players)
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, stale_weights_action="stop",
                                                               stale_weights_threshold=1e-4))
    copy_answer_store(straight_and_resumed, tmp_path)
    outcome = run_distributed(run_without_weight_sync, 1, cfg, timeout=900)[0]
    assert outcome.startswith("StaleEngineWeights: step 1: the engine's log-probs of its own samples differ")
    assert "over rollout.stale_weights_threshold=0.0001" in outcome


def run_killing_a_server(rank, world_size, cfg, victim, kill_at):
    """The run, with ``victim``'s vLLM server (an opponent's name, or "judge") killed with SIGKILL just
    before step ``kill_at``."""
    import os
    import signal

    from megatron_elo.recipes.games import GamesRecipe
    from megatron_elo.runner.errors import EngineStopped
    from megatron_elo.runner.runner import Runner

    original = GamesRecipe.step

    def killing(self, step):
        if step == kill_at:
            engine = self.judge.backend.engine if victim == "judge" else self.opponents.players[victim].engine
            os.kill(engine.server.process.pid, signal.SIGKILL)
            engine.server.process.wait()
        return original(self, step)

    GamesRecipe.step = killing
    runner = Runner(cfg)
    try:
        summary = runner.run()
    except EngineStopped as err:
        return {"stopped": str(err), "step": runner.run_state.step}
    weights = {n: p.detach().clone() for n, p in runner.recipe.trainer.model.named_parameters()}
    return {"summary": summary, "weights": weights, "metrics": runner.last_record.extra_metrics}


def served_medium_config(root: Path, players: Path, *, restarts: int):
    cfg = small_config(root, players)
    medium = next(o for o in cfg.opponents if o.name == "medium")
    medium.engine.launch, medium.engine.restarts, medium.engine.kv_cache_gib = "server", restarts, 0.1
    return cfg


def test_a_killed_opponent_server_is_restarted_or_the_run_checkpoints_and_resumes(straight_and_resumed, players, tmp_path):
    """kill -9 of the medium opponent's vLLM server before step 2: with restarts left the run starts it
    again and ends as the uninterrupted run (a seeded server answers as the in-process engine); with
    none it writes step 2's checkpoint and stops naming the engine and its log, and the same command
    resumes to that same end."""
    straight = straight_and_resumed[0]  # (summary, weights, ...) of the uninterrupted run
    revived = run_distributed(run_killing_a_server, 1, served_medium_config(tmp_path / "revived", players, restarts=2),
                              "medium", 2, timeout=900)[0]
    assert revived["summary"]["finished"] and revived["metrics"]["engine/restarts/medium"] == 1.0
    assert revived["summary"]["elo"] == straight[0]["elo"]
    assert all(torch.equal(revived["weights"][k], v) for k, v in straight[1].items())

    cfg = served_medium_config(tmp_path / "stopped", players, restarts=0)
    stopped = run_distributed(run_killing_a_server, 1, cfg, "medium", 2, timeout=900)[0]
    assert "opponents.medium's vLLM server" in stopped["stopped"] and "engine_logs/medium.log" in stopped["stopped"]
    assert "a checkpoint of step 2 was written" in stopped["stopped"] and stopped["step"] == 2
    resumed = run_distributed(run_loop, 1, cfg, timeout=900)[0]
    assert resumed[0]["finished"] and resumed[0]["elo"] == straight[0]["elo"]
    assert all(torch.equal(resumed[1][k], v) for k, v in straight[1].items())


def test_a_killed_judge_server_is_restarted_and_no_game_is_lost(tmp_path):
    """The same for the LLM judge on a server the run started: killed with SIGKILL before step 1, it
    is started again, and every game of every step is still judged."""
    from megatron_elo.models.tiny import lift_output_tokens, make_tiny_hf_model, make_tiny_tokenizer

    raw = file_prompts_config(tmp_path, references=False)
    make_tiny_hf_model(_byte_arch(), tmp_path / "judge", seed=5, init_std=0.3)
    make_tiny_tokenizer(tmp_path / "judge")
    lift_output_tokens(tmp_path / "judge")
    raw["judge"] = {"kind": "llm", "model": {"path": str(tmp_path / "judge"), "dtype": "fp32"}, "logprob_verdicts": True,
                    "engine": {**raw["rollout"]["engine"], "max_model_len": 1024, "launch": "server", "kv_cache_gib": 0.1,
                               "restarts": 1}}
    raw.update(data={**raw["data"], "loader": "default"})
    raw["trainer"]["steps"], raw["checkpoint"] = 2, {"every_steps": 0, "export_hf": False}
    cfg = validate(config_from_dict(raw))
    result = run_distributed(run_killing_a_server, 1, cfg, "judge", 1, timeout=900)[0]
    assert result["summary"]["finished"] and result["metrics"]["engine/restarts/judge"] == 1.0
    assert result["metrics"]["judge/failed_rate"] == 0.0
