"""Config loading, overrides and up-front validation: every error names its field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_elo.config.loader import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_yaml,
    flatten,
    load_config,
    read_yaml,
)
from megatron_elo.config.validate import validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
QWEN7B = ROOT / "configs" / "qwen2.5-7b_elo_evolve.yaml"


def tiny(*overrides: str, world_size: int | None = None):
    return validate(load_config(TINY, list(overrides)), world_size=world_size)


RANDOM_INIT = ("prepare=null", "model.path=null", "opponents.0.model.path=null", "opponents.1.model.path=null",
               "opponents.2.model.path=null")


def tiny_random(*overrides: str):
    """The tiny config with random-init models (arch from the YAML alone), for architecture checks."""
    return tiny(*RANDOM_INIT, *overrides)


def problems_of(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


# ---------------------------------------------------------------- shipped configs


def test_tiny_cpu_config_is_valid():
    cfg = tiny()  # its players do not exist yet: `prepare` makes them, so their paths are not required
    assert cfg.model.arch == cfg.prepare.arch
    assert cfg.cluster.device == "cpu"
    assert cfg.model.arch.kv_channels == 64  # vLLM's CPU attention needs head_dim >= 32
    assert [o.name for o in cfg.opponents] == ["weak", "medium", "strong"]


def test_qwen7b_config_matches_the_paper_layout_without_checkpoints():
    cfg = validate(load_config(QWEN7B), check_paths=False)
    # GPU engines decode with CUDA graphs unless told otherwise; the CPU demo's are eager
    assert cfg.rollout.engine.enforce_eager is False and {o.engine.enforce_eager for o in cfg.opponents} == {False}
    assert cfg.judge.engine.enforce_eager is False
    assert tiny().rollout.engine.enforce_eager is True
    assert validate(load_config(QWEN7B, ["opponents.0.engine.enforce_eager=true"]), check_paths=False
                    ).opponents[0].engine.enforce_eager is True
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp) == (2, 2, 2)
    assert cfg.cluster.nodes == 2 and cfg.cluster.devices_per_node == 8
    assert {o.name: o.engine.tp for o in cfg.opponents} == {"qwen2.5-32b": 4, "qwen2.5-14b": 2, "qwen3-8b": 1}
    assert cfg.judge.kind == "llm" and cfg.judge.model.path.endswith("Qwen3-14B")
    assert cfg.model.arch.num_attention_heads == 28 and cfg.model.arch.vocab_size == 152064


def test_qwen7b_config_reports_each_missing_checkpoint():
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(QWEN7B))
    text = problems_of(excinfo)
    for field in ("model.path", "opponents.0.model.path", "opponents.1.model.path", "opponents.2.model.path", "judge.model.path"):
        assert f"{field}:" in text
    assert "no config.json" in text


# ---------------------------------------------------------------- loading and overrides


def test_unknown_keys_get_did_you_mean_at_every_depth():
    with pytest.raises(ConfigError) as excinfo:
        load_config(TINY, ["trainer.lrr=1e-5", "rollout.engine.tpp=2", "opponents.weak.modle.path=x", "seeed=1"])
    text = problems_of(excinfo)
    assert "trainer.lrr: unknown key; did you mean trainer.lr?" in text
    assert "rollout.engine.tpp: unknown key; did you mean rollout.engine.tp?" in text
    assert "opponents.0.modle: unknown key; did you mean opponents.0.model?" in text
    assert "seeed: unknown key; did you mean seed?" in text


def test_wrong_types_and_choices_are_named():
    with pytest.raises(ConfigError) as excinfo:
        load_config(TINY, ["trainer.steps=ten", "trainer.lr=fast", "judge.kind=human", "parallel.tp=1.5",
                           "trainer.kernels=tritn", "eval.opponents=weak"])
    text = problems_of(excinfo)
    assert "trainer.steps: expected int, got str 'ten'" in text
    assert "trainer.lr: expected float, got str 'fast'" in text
    assert "judge.kind: 'human' is not one of 'llm', 'programmatic'" in text
    assert "parallel.tp: expected int, got float 1.5" in text
    assert "did you mean 'triton'?" in text
    assert "eval.opponents: expected a list" in text


def test_overrides_set_scalars_lists_by_index_and_by_name():
    cfg = load_config(TINY, ["trainer.lr=2e-6", "opponents.1.initial_rating=1234", "opponents.strong.temperature=0.3",
                             "eval.opponents=[weak, strong]", "tracking.tracking_uri=file:///tmp/x"])
    assert cfg.trainer.lr == 2e-6  # "2e-6" is a string to PyYAML; float fields take it
    assert cfg.opponents[1].initial_rating == 1234.0
    assert cfg.opponents[2].temperature == 0.3
    assert cfg.eval.opponents == ["weak", "strong"]
    assert cfg.tracking.tracking_uri == "file:///tmp/x"


@pytest.mark.parametrize("override, message", [
    ("trainer.lr", "expected KEY=VALUE"),
    ("trainer..lr=1", "empty key segment"),
    ("opponents.nobody.temperature=1", "matches no list item"),
    ("opponents.7.temperature=1", "matches no list item"),
    ("seed.x=1", "seed is a int, not a mapping"),
    ("trainer.lr.x=1", "trainer.lr is a float, not a mapping"),
])
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(TINY, [override])
    assert message in problems_of(excinfo)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml(listy)


def test_required_opponent_name():
    raw = read_yaml(TINY)
    del raw["opponents"][0]["name"]
    with pytest.raises(ConfigError, match=r"opponents\.0\.name: required field is missing"):
        config_from_dict(raw)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = tiny("trainer.lr=3e-5", "opponents.weak.initial_rating=850")
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert validate(load_config(path)) == cfg


def test_an_override_of_a_yaml_alias_changes_only_that_place():
    cfg = load_config(TINY, ["opponents.weak.model.arch.num_layers=4"])  # every arch is the anchor *tiny_arch
    assert cfg.opponents[0].model.arch.num_layers == 4
    assert cfg.model.arch.num_layers == cfg.opponents[1].model.arch.num_layers == cfg.prepare.arch.num_layers == 2


def test_apply_overrides_does_not_touch_the_input():
    raw = {"trainer": {"lr": 1.0}}
    assert apply_overrides(raw, ["trainer.lr=2"]) == {"trainer": {"lr": 2}}
    assert raw == {"trainer": {"lr": 1.0}}


def test_flatten_gives_dotted_keys():
    assert flatten({"a": {"b": 1, "c": []}, "l": [{"x": 2}]}) == {"a.b": 1, "a.c": [], "l.0.x": 2}


# ---------------------------------------------------------------- cross-field validation


def test_world_size_must_equal_tp_pp_dp():
    with pytest.raises(ConfigError) as excinfo:
        tiny("parallel.dp=2")
    text = problems_of(excinfo)
    assert "parallel: tp*pp*dp = 1*1*2 = 2 does not equal the trainer world size 1" in text
    assert "set parallel.dp=1" in text


def test_world_size_from_the_launcher_is_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    from megatron_elo.cli import load_and_validate

    with pytest.raises(ConfigError, match="does not equal the trainer world size 2"):
        load_and_validate(str(TINY), [])
    cfg = load_and_validate(str(TINY), ["parallel.dp=2", "cluster.devices_per_node=2", "rollout.engine.dp=2",
                                        "opponents.0.engine.dp=2", "opponents.1.engine.dp=2", "opponents.2.engine.dp=2"])
    assert cfg.parallel.dp == 2


def test_greedy_eval_takes_one_sample():
    with pytest.raises(ConfigError, match="eval.samples_per_prompt: greedy evaluation .* gives identical samples"):
        tiny("eval.temperature=0", "eval.samples_per_prompt=4")
    assert tiny("eval.temperature=0", "eval.samples_per_prompt=1").eval.temperature == 0


def test_megatron_core_optimizer_and_schedule_need_cuda():
    with pytest.raises(ConfigError, match="trainer.optimizer=megatron_core: .* cluster.device=cpu; set trainer.optimizer=torch"):
        tiny("trainer.optimizer=megatron_core")
    assert tiny("trainer.optimizer=torch").trainer.optimizer == "torch"
    with pytest.raises(ConfigError, match="trainer.pipeline_schedule=1f1b: .* cluster.device=cpu; set trainer.pipeline_schedule=seq"):
        tiny("trainer.pipeline_schedule=1f1b")


def test_sequence_parallel_is_refused_rather_than_ignored():
    with pytest.raises(ConfigError, match="parallel.sequence_parallel: not supported yet .* set it false"):
        tiny("parallel.sequence_parallel=true")


def test_heads_kv_heads_ffn_and_vocab_must_divide_by_tp():
    with pytest.raises(ConfigError) as excinfo:
        tiny_random("parallel.tp=3", "cluster.devices_per_node=3", "model.arch.vocab_size=128",
             "rollout.engine.tp=3", "opponents.0.engine.dp=3", "opponents.1.engine.dp=3", "opponents.2.engine.dp=3")
    text = problems_of(excinfo)
    assert "parallel.tp=3: model.arch.num_attention_heads=2 is not divisible by it" in text
    assert "parallel.tp=3: model.arch.num_kv_heads=2 is not divisible by it (the trainer's TP must divide the KV heads)" in text
    assert "parallel.tp=3: model.arch.vocab_size=128 is not divisible by it; set model.pad_vocab_to_multiple_of" in text
    assert "parallel.tp=3: model.arch.ffn_hidden_size=256 is not divisible by it" in text


def test_engines_may_replicate_kv_heads_but_the_trainer_may_not():
    four_heads = [f"{m}.arch.num_attention_heads=4" for m in ("model", "opponents.0.model", "opponents.1.model", "opponents.2.model")]
    four_heads += [f"{m}.arch.head_dim=32" for m in ("model", "opponents.0.model", "opponents.1.model", "opponents.2.model")]
    world = ["cluster.devices_per_node=4", "opponents.0.engine.dp=4", "opponents.1.engine.dp=4"]
    # An opponent engine with tp=4 over 2 KV heads replicates them (vLLM does); fine.
    cfg = tiny_random(*four_heads, *world, "parallel.dp=4", "rollout.engine.dp=4", "opponents.2.engine.tp=4")
    assert cfg.opponents[2].engine.tp == 4
    with pytest.raises(ConfigError, match=r"parallel.tp=4: model.arch.num_kv_heads=2 is not divisible"):
        tiny_random(*four_heads, *world, "parallel.tp=4", "rollout.engine.tp=4", "opponents.2.engine.dp=4")


def test_vocab_padding_lifts_the_vocab_rule():
    with pytest.raises(ConfigError, match="vocab_size=127 is not divisible"):
        tiny_random("model.arch.vocab_size=127", "parallel.tp=2", "cluster.devices_per_node=2", "rollout.engine.tp=2",
             "opponents.0.engine.dp=2", "opponents.1.engine.dp=2", "opponents.2.engine.dp=2")
    cfg = tiny_random("model.arch.vocab_size=127", "model.pad_vocab_to_multiple_of=64", "parallel.tp=2",
               "cluster.devices_per_node=2", "rollout.engine.tp=2",
               "opponents.0.engine.dp=2", "opponents.1.engine.dp=2", "opponents.2.engine.dp=2")
    assert cfg.parallel.tp == 2


def test_layers_must_divide_by_pp():
    with pytest.raises(ConfigError) as excinfo:
        tiny_random("model.arch.num_layers=3", "parallel.pp=2", "cluster.devices_per_node=2", "rollout.engine.dp=2",
             "opponents.0.engine.dp=2", "opponents.1.engine.dp=2", "opponents.2.engine.dp=2")
    assert "parallel.pp=2: model.arch.num_layers=3 is not divisible by it" in problems_of(excinfo)


def test_engine_tp_must_divide_its_models_heads():
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(QWEN7B, ["opponents.qwen3-8b.engine.tp=3"]), check_paths=False)
    assert "opponents.2.engine.tp=3: opponents.2.model.arch.num_attention_heads=32 is not divisible by it" in problems_of(excinfo)


def test_colocated_engine_must_span_the_trainer_world():
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(QWEN7B, ["rollout.engine.dp=2"]), check_paths=False)
    text = problems_of(excinfo)
    assert "rollout.engine: colocated engine spans tp*dp = 2*2 = 4 ranks but the trainer has 8 (the world" in text
    assert "set rollout.engine.dp=4" in text


def test_dedicated_engines_must_not_overlap_or_overflow_or_sit_on_trainer_nodes():
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(QWEN7B, ["opponents.qwen2.5-14b.engine.first_device=2", "opponents.qwen3-8b.engine.node=0",
                                      "judge.engine.first_device=8"]), check_paths=False)
    text = problems_of(excinfo)
    assert "opponents.1.engine: node 1 device 2 is already used by opponents.0.engine" in text
    assert "opponents.2.engine.node=0: dedicated engines go on non-trainer nodes 1..1" in text
    assert "judge.engine: devices 8..8 do not fit in cluster.devices_per_node=8" in text


def test_batch_arithmetic():
    with pytest.raises(ConfigError) as excinfo:
        tiny("trainer.global_batch_size=24", "trainer.micro_batch_size=5")
    text = problems_of(excinfo)
    assert "trainer.global_batch_size=24: must divide the sequences per step (rollout.prompts_per_step * rollout.n_per_prompt = 128)" in text
    assert "must be a multiple of trainer.micro_batch_size * parallel.dp = 5" in text


def test_range_checks_name_the_field():
    with pytest.raises(ConfigError) as excinfo:
        tiny("trainer.lr=0", "trainer.clip_low=1.5", "judge.noise=2", "algorithm.elo.temperature=0", "rollout.n_per_prompt=0",
             "rollout.engine.gpu_memory_utilization=1.5", "eval.temperature=-0.5", "eval.samples_per_prompt=0")
    text = problems_of(excinfo)
    for fragment in ("trainer.lr: must be > 0", "trainer.clip_low: must be in [0, 1)", "judge.noise: must be a probability",
                     "algorithm.elo.temperature: must be > 0", "rollout.n_per_prompt: must be >= 1",
                     "rollout.engine.gpu_memory_utilization: must be in (0, 1]",
                     "eval.temperature: must be >= 0 (0 = greedy), got -0.5", "eval.samples_per_prompt: must be >= 1, got 0"):
        assert fragment in text


def test_algorithm_wiring():
    with pytest.raises(ConfigError, match=r"algorithm.static_opponent: 'nobody' is not an opponent name"):
        tiny("algorithm.name=static_pairwise", "algorithm.static_opponent=nobody")
    with pytest.raises(ConfigError, match=r"opponents: algorithm.name=elo_evolve needs at least one opponent"):
        tiny("opponents=[]")
    with pytest.raises(ConfigError, match=r"opponents: names must be unique; repeated: \['weak'\]"):
        tiny("opponents.medium.name=weak")
    with pytest.raises(ConfigError, match=r"eval.opponents.0: 'champion' is not an opponent name"):
        tiny("eval.opponents=[champion]")
    with pytest.raises(ConfigError, match=r"judge.model: an LLM judge"):
        tiny("judge.kind=llm")
    assert tiny("algorithm.name=point").algorithm.name == "point"


def test_data_files_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_path: data.format=jsonl needs a prompts file"):
        tiny("data.format=jsonl")
    with pytest.raises(ConfigError, match=r"data.train_path: file '.*missing.jsonl' does not exist"):
        tiny("data.format=jsonl", f"data.train_path={tmp_path}/missing.jsonl")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(ConfigError, match=r"prompts.txt' should end in .jsonl or .parquet"):
        tiny("data.format=jsonl", f"data.train_path={tmp_path}/prompts.txt")
    with pytest.raises(ConfigError, match=r"data.eval_path: data.format=jsonl needs held-out prompts"):
        tiny("data.format=jsonl", f"data.train_path={prompts}")
    with pytest.raises(ConfigError, match=r"data.reference_field: judge.kind=programmatic checks answers"):
        tiny("data.format=jsonl", f"data.train_path={prompts}", f"data.eval_path={prompts}")
    ok = tiny("data.format=parquet", f"data.train_path={prompts}", f"data.eval_path={prompts}", "data.reference_field=answer")
    assert ok.data.train_path == str(prompts)


def _write_hf_config(directory: Path, **changes) -> Path:
    hf = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
          "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 128,
          "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
    hf.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf))
    return directory


def test_architecture_is_read_from_the_checkpoint(tmp_path):
    model_dir = _write_hf_config(tmp_path / "policy", num_hidden_layers=4)
    cfg = tiny(f"model.path={model_dir}", "model.arch=null")
    assert cfg.model.arch.num_layers == 4 and cfg.model.arch.family == "qwen2"


def test_declared_architecture_must_match_the_checkpoint(tmp_path):
    model_dir = _write_hf_config(tmp_path / "policy", num_hidden_layers=4)
    with pytest.raises(ConfigError, match=r"model.arch: differs from .*config.json"):
        tiny(f"model.path={model_dir}")  # the YAML declares num_layers: 2


def test_unsupported_or_incomplete_checkpoint_config(tmp_path):
    with pytest.raises(ConfigError, match=r"model.path: .*model_type 'gpt2' is not supported"):
        tiny(f"model.path={_write_hf_config(tmp_path / 'a', model_type='gpt2')}", "model.arch=null")
    broken = _write_hf_config(tmp_path / "b")
    data = json.loads((broken / "config.json").read_text())
    del data["hidden_size"]
    (broken / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"model.path: .*required key 'hidden_size' is missing"):
        tiny(f"model.path={broken}", "model.arch=null")


def test_a_model_needs_a_path_or_an_arch():
    with pytest.raises(ConfigError, match=r"opponents.0.model: set opponents.0.model.path .* or opponents.0.model.arch"):
        tiny_random("opponents.weak.model.arch=null")


def test_prepared_players_must_match_prepare_arch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative player paths: not the checkout's runs/ (a demo may have made them)
    with pytest.raises(ConfigError, match=r"opponents.0.model.arch: differs from prepare.arch"):
        tiny("opponents.weak.model.arch.num_layers=4")
    with pytest.raises(ConfigError, match=r"opponents.0.model.path: 'runs/elsewhere' has no config.json"):
        tiny("opponents.weak.model.path=runs/elsewhere")


def test_llm_judge_template_is_checked_up_front(tmp_path):
    template = tmp_path / "judge.txt"
    template.write_text("{question} {answer_a}")
    with pytest.raises(ConfigError, match=r"judge.template .*judge.txt: uses fields \['answer_a', 'question'\]"):
        tiny("judge.kind=llm", f"judge.model.path={_write_hf_config(tmp_path / 'judge')}", f"judge.template={template}")
    with pytest.raises(ConfigError, match=r"judge.template: no file at .*missing.txt"):
        tiny("judge.kind=llm", f"judge.model.path={tmp_path / 'judge'}", f"judge.template={tmp_path}/missing.txt")


def test_settings_without_an_effect_are_unknown_or_refused(tmp_path):
    """opponents[].frozen and the 'sorting' task were accepted and ignored: now refused; a reward model
    is for the point recipe only and must be on disk."""
    with pytest.raises(ConfigError, match=r"opponents.0.frozen: unknown key"):
        tiny("opponents.weak.frozen=false")
    with pytest.raises(ConfigError, match=r"data.synthetic.task: 'sorting' is not one of 'arithmetic'"):
        tiny("data.synthetic.task=sorting")
    with pytest.raises(ConfigError) as excinfo:
        tiny(f"algorithm.reward_model.path={tmp_path / 'rm'}")
    problems = problems_of(excinfo)
    assert "algorithm.reward_model: only methods that score answers alone (point, eva with scorer" in problems
    assert "algorithm.reward_model.path" in problems and "has no config.json" in problems
