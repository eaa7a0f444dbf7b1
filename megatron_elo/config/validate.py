"""Cross-field checks on a ``RunConfig``, run once at start-up before anything is launched.

``validate(cfg)`` collects every problem (parallel sizes against the world, heads / vocab / layers
against TP and PP, engine placements, batch arithmetic, algorithm wiring, paths on disk) and raises
one ``ConfigError`` naming each field and the fix. It also fills each model's ``arch`` from its
checkpoint's config.json when the path exists.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

from megatron_elo.config.hf_arch import read_hf_arch
from megatron_elo.config.loader import ConfigError
from megatron_elo.config.schema import ArchConfig, EngineConfig, ModelConfig, RunConfig
from megatron_elo.config.validate_eval import check_benchmarks
from megatron_elo.config.validate_pairs import PAIR_RECIPES, check_pairs
from megatron_elo.config.validate_self_improve import check_self_improve, scores_single_answers
from megatron_elo.config.validate_sparta import check_sparta, player_model, slice_count


def trainer_world_size(cfg: RunConfig) -> int:
    """Ranks in the trainer's torchrun world: trainer nodes x devices per node."""
    nodes = cfg.cluster.trainer_nodes or cfg.cluster.nodes
    return nodes * cfg.cluster.devices_per_node


def world_size_from_env() -> int | None:
    """WORLD_SIZE set by torchrun / SLURM launchers, if any (read once at start-up)."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value and value.isdigit() else None


@dataclass
class _Check:
    """Accumulates problems; ``need(cond, msg)`` records ``msg`` when ``cond`` is false."""

    problems: list[str]

    def need(self, condition: bool, message: str) -> bool:
        if not condition:
            self.problems.append(message)
        return condition


def validate(cfg: RunConfig, *, world_size: int | None = None, check_paths: bool = True) -> RunConfig:
    """Validate ``cfg`` in place (filling ``arch`` from checkpoints) and return it.

    world_size: the launched trainer world (WORLD_SIZE); default: what ``cluster`` describes.
    check_paths: also require model / data / template paths to exist (off to check a cluster
    config on a machine without the checkpoints).
    """
    check = _Check([])
    _check_ranges(cfg, check)
    prepared = {s.path: cfg.prepare.arch for s in cfg.prepare.snapshots} if cfg.prepare else {}
    _resolve_arch(cfg.model, "model", check, check_paths, prepared)
    for i, opponent in enumerate(cfg.opponents):
        _resolve_arch(opponent.model, f"opponents.{i}.model", check, check_paths, prepared)
    if cfg.judge.model is not None:
        _resolve_arch(cfg.judge.model, "judge.model", check, check_paths, prepared)
    _check_player_archs(cfg, check, check_paths, prepared)
    if check.problems:  # later checks need sane numbers and architectures
        raise ConfigError(check.problems)
    _check_trainer_layout(cfg, check, world_size or trainer_world_size(cfg))
    _resolve_engine_defaults(cfg)
    _check_layer_specs(cfg, check)
    _check_engines(cfg, check)
    _check_batches(cfg, check)
    _check_algorithm(cfg, check, check_paths)
    _check_data(cfg, check, check_paths)
    if check.problems:
        raise ConfigError(check.problems)
    return cfg


# ---------------------------------------------------------------- single-field ranges


def _check_ranges(cfg: RunConfig, check: _Check) -> None:
    positive = {
        "cluster.nodes": cfg.cluster.nodes,
        "cluster.devices_per_node": cfg.cluster.devices_per_node,
        "parallel.tp": cfg.parallel.tp,
        "parallel.pp": cfg.parallel.pp,
        "parallel.dp": cfg.parallel.dp,
        "trainer.steps": cfg.trainer.steps,
        "trainer.micro_batch_size": cfg.trainer.micro_batch_size,
        "trainer.global_batch_size": cfg.trainer.global_batch_size,
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.n_per_prompt": cfg.rollout.n_per_prompt,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "rollout.max_prompt_tokens": cfg.rollout.max_prompt_tokens,
        "rollout.engine.tp": cfg.rollout.engine.tp,
        "rollout.engine.dp": cfg.rollout.engine.dp,
        "eval.samples_per_prompt": cfg.eval.samples_per_prompt,
    }
    for i, opponent in enumerate(cfg.opponents):
        positive[f"opponents.{i}.engine.tp"] = opponent.engine.tp
        positive[f"opponents.{i}.engine.dp"] = opponent.engine.dp
    for name, value in positive.items():
        check.need(value >= 1, f"{name}: must be >= 1, got {value}")
    if cfg.cluster.trainer_nodes is not None:
        check.need(
            1 <= cfg.cluster.trainer_nodes <= cfg.cluster.nodes,
            f"cluster.trainer_nodes: must be between 1 and cluster.nodes={cfg.cluster.nodes}, got {cfg.cluster.trainer_nodes}",
        )
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "never"):
        check.need(Path(resume, "meta.json").is_file(),
                   f"checkpoint.resume: {resume!r} is neither auto, never nor a checkpoint directory (a step_* folder "
                   f"with meta.json)")
    rollout = cfg.rollout
    check.need(rollout.max_prompt_tokens + rollout.max_new_tokens <= rollout.engine.max_model_len,
               f"rollout.max_prompt_tokens + rollout.max_new_tokens = {rollout.max_prompt_tokens} + {rollout.max_new_tokens}: "
               f"must fit rollout.engine.max_model_len={rollout.engine.max_model_len}; lower them or raise max_model_len")
    check.need(rollout.stale_weights_threshold > 0,
               f"rollout.stale_weights_threshold: must be > 0 nats, got {rollout.stale_weights_threshold}")
    check.need(cfg.cluster.timeout_minutes > 0, f"cluster.timeout_minutes: must be > 0, got {cfg.cluster.timeout_minutes}")
    t = cfg.trainer
    check.need(t.lr > 0, f"trainer.lr: must be > 0, got {t.lr}")
    check.need(0 <= t.min_lr <= t.lr, f"trainer.min_lr: must be in [0, trainer.lr={t.lr}], got {t.min_lr}")
    check.need(0 <= t.clip_low < 1, f"trainer.clip_low: must be in [0, 1), got {t.clip_low}")
    check.need(t.clip_high >= 0, f"trainer.clip_high: must be >= 0, got {t.clip_high}")
    check.need(t.kl_coef >= 0, f"trainer.kl_coef: must be >= 0 (0 disables the KL term), got {t.kl_coef}")
    check.need(t.grad_clip >= 0, f"trainer.grad_clip: must be >= 0 (0 disables clipping), got {t.grad_clip}")
    check.need(t.warmup_steps >= 0, f"trainer.warmup_steps: must be >= 0, got {t.warmup_steps}")
    check.need(t.optimizer != "megatron_core" or cfg.cluster.device == "cuda",
               "trainer.optimizer=megatron_core: megatron-core's DDP and optimizer allocate on CUDA, but "
               "cluster.device=cpu; set trainer.optimizer=torch (or auto)")
    check.need(t.pipeline_schedule != "1f1b" or cfg.cluster.device == "cuda",
               "trainer.pipeline_schedule=1f1b: megatron-core's schedules allocate on CUDA, but cluster.device=cpu; "
               "set trainer.pipeline_schedule=sequential (or auto)")
    check.need(cfg.eval.temperature >= 0, f"eval.temperature: must be >= 0 (0 = greedy), got {cfg.eval.temperature}")
    if t.kernels == "triton":
        import importlib.util

        check.need(importlib.util.find_spec("triton") is not None,
                   "trainer.kernels=triton: the `triton` package is not installed (CUDA torch builds ship it; "
                   "pip install triton), or set trainer.kernels=torch")
    check.need(cfg.rollout.temperature > 0, f"rollout.temperature: must be > 0, got {cfg.rollout.temperature}")
    check.need(0 < cfg.rollout.top_p <= 1, f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p}")
    check.need(0 <= cfg.judge.noise <= 1, f"judge.noise: must be a probability in [0, 1], got {cfg.judge.noise}")
    elo = cfg.algorithm.elo
    check.need(elo.k_factor > 0, f"algorithm.elo.k_factor: must be > 0, got {elo.k_factor}")
    check.need(elo.temperature > 0, f"algorithm.elo.temperature: must be > 0, got {elo.temperature}")
    if elo.temperature_end is not None:
        check.need(elo.temperature_end > 0, f"algorithm.elo.temperature_end: must be > 0, got {elo.temperature_end}")
    check.need(0 < elo.target_win_rate < 1, f"algorithm.elo.target_win_rate: must be in (0, 1), got {elo.target_win_rate}")
    check.need(elo.window_steps >= 1, f"algorithm.elo.window_steps: must be >= 1, got {elo.window_steps}")
    check.need(elo.window_prior > 0, f"algorithm.elo.window_prior: must be > 0 rating points, got {elo.window_prior}")
    check.need(elo.batch_reduction == "mean" or elo.rating_update in ("batch", "anchored"),
               f"algorithm.elo.batch_reduction={elo.batch_reduction} applies to rating_update batch / anchored only; "
               f"{elo.rating_update} sets each step itself: remove batch_reduction")
    for where, engine in _engines(cfg):
        check.need(
            0 < engine.gpu_memory_utilization <= 1,
            f"{where}.gpu_memory_utilization: must be in (0, 1], got {engine.gpu_memory_utilization}",
        )
        check.need(engine.startup_timeout_s > 0 and engine.request_timeout_s > 0,
                   f"{where}.startup_timeout_s / request_timeout_s: must be > 0 seconds, got "
                   f"{engine.startup_timeout_s} / {engine.request_timeout_s}")
        check.need(engine.retries >= 0, f"{where}.retries: must be >= 0, got {engine.retries}")
        if engine.port is not None:
            check.need(1024 <= engine.port <= 65535, f"{where}.port: must be in 1024..65535, got {engine.port}")
        if engine.server_url is not None:
            check.need(engine.server_url.startswith(("http://", "https://")),
                       f"{where}.server_url: must start with http:// or https://, got {engine.server_url!r}")


# ---------------------------------------------------------------- models


def _resolve_arch(model: ModelConfig, where: str, check: _Check, check_paths: bool,
                  prepared: dict[str, ArchConfig]) -> None:
    """Fill ``model.arch`` from ``<model.path>/config.json`` (or from ``prepare`` for a player the run
    makes itself); ``where`` is the model's dotted field."""
    if model.path is None:
        check.need(model.arch is not None, f"{where}: set {where}.path (an HF checkpoint dir) or {where}.arch (random init)")
        return
    config_json = Path(model.path) / "config.json"
    if not config_json.is_file() and model.path in prepared:  # made by the run itself before anything loads it
        if model.arch is None:
            model.arch = prepared[model.path]
        elif model.arch != prepared[model.path]:
            check.problems.append(f"{where}.arch: differs from prepare.arch, which {model.path!r} is made with")
        return
    if not config_json.is_file():
        if check_paths:
            check.problems.append(f"{where}.path: {model.path!r} has no config.json; point it at a local HF checkpoint directory")
        else:
            check.need(model.arch is not None, f"{where}.arch: needed to check the layout without {model.path!r} on disk")
        return
    try:
        on_disk = read_hf_arch(model.path)
    except ValueError as err:
        check.problems.append(f"{where}.path: {err}")
        return
    if model.arch is not None and model.arch != on_disk:
        check.problems.append(f"{where}.arch: differs from {config_json}; remove arch from the YAML or make it match")
        return
    model.arch = on_disk
    if check_paths and model.tokenizer is not None:
        check.need(Path(model.tokenizer).is_dir(), f"{where}.tokenizer: directory {model.tokenizer!r} does not exist")


def _check_player_archs(cfg: RunConfig, check: _Check, check_paths: bool, prepared: dict[str, ArchConfig]) -> None:
    """Each SPARTA player's checkpoint has the tribe's architecture (``model.arch``; without the paths checked, a
    player not on disk is taken to have it)."""
    for i in range(len(cfg.players)):
        model = replace(player_model(cfg, i), arch=None)
        if not check_paths and model.path not in prepared and not (Path(model.path) / "config.json").is_file():
            continue
        _resolve_arch(model, f"players.{i}", check, check_paths, prepared)
        if model.arch is not None and cfg.model.arch is not None and model.arch != cfg.model.arch:
            check.problems.append(f"players.{i}.path: {model.path!r} has another architecture than model.arch; a tribe "
                                  f"shares one architecture (train players of different shapes in separate runs)")


def _check_trainer_layout(cfg: RunConfig, check: _Check, world_size: int) -> None:
    p = cfg.parallel
    slices = slice_count(cfg)
    product = p.tp * p.pp * p.dp * slices
    nodes = cfg.cluster.trainer_nodes or cfg.cluster.nodes
    if product != world_size:
        per_slice = world_size // slices
        fix = (f"parallel.dp={per_slice // (p.tp * p.pp)}" if world_size % slices == 0 and per_slice % (p.tp * p.pp) == 0
               else "parallel.tp/pp/dp")
        sliced = f" x algorithm.sparta.slices={slices}" if slices > 1 else ""
        check.problems.append(
            f"parallel: tp*pp*dp{sliced} = {p.tp}*{p.pp}*{p.dp}{f'*{slices}' if slices > 1 else ''} = {product} does not "
            f"equal the trainer world size {world_size} ({nodes} trainer node(s) x cluster.devices_per_node="
            f"{cfg.cluster.devices_per_node}); set {fix}"
        )
    check.need(not p.sequence_parallel,
               "parallel.sequence_parallel: not supported yet (megatron-core's local-spec norms refuse it, and the "
               "trainer's pipeline buffers, fused log-prob path and gradient sync assume whole sequences); set it false")
    arch = cfg.model.arch
    assert arch is not None
    _check_arch_tp(arch, p.tp, "parallel.tp", "model.arch", check, check_vocab=cfg.model.pad_vocab_to_multiple_of is None)
    check.need(
        arch.num_layers % p.pp == 0,
        f"parallel.pp={p.pp}: model.arch.num_layers={arch.num_layers} is not divisible by it; pick a divisor of {arch.num_layers}",
    )


def _check_arch_tp(arch: ArchConfig, tp: int, tp_field: str, arch_field: str, check: _Check, *, check_vocab: bool,
                   replicate_kv_heads: bool = False) -> None:
    """Heads, KV heads, FFN and (unless padded) vocab must split evenly over ``tp`` ranks; an engine
    (``replicate_kv_heads``) may also have tp a multiple of the KV heads."""
    check.need(
        arch.num_attention_heads % tp == 0,
        f"{tp_field}={tp}: {arch_field}.num_attention_heads={arch.num_attention_heads} is not divisible by it",
    )
    if replicate_kv_heads:  # vLLM replicates KV heads when tp > kv heads
        check.need(
            arch.num_kv_heads % tp == 0 or tp % arch.num_kv_heads == 0,
            f"{tp_field}={tp}: {arch_field}.num_kv_heads={arch.num_kv_heads} neither divides nor is divisible by it",
        )
    else:  # megatron-core's tp > kv-heads path reads global parallel state, which is never initialised here
        check.need(
            arch.num_kv_heads % tp == 0,
            f"{tp_field}={tp}: {arch_field}.num_kv_heads={arch.num_kv_heads} is not divisible by it (the trainer's TP "
            f"must divide the KV heads)",
        )
    check.need(
        arch.head_dim is not None or arch.hidden_size % arch.num_attention_heads == 0,
        f"{arch_field}.hidden_size={arch.hidden_size} is not divisible by num_attention_heads={arch.num_attention_heads}; set head_dim",
    )
    if check_vocab:
        check.need(
            arch.vocab_size % tp == 0,
            f"{tp_field}={tp}: {arch_field}.vocab_size={arch.vocab_size} is not divisible by it; "
            f"set model.pad_vocab_to_multiple_of (e.g. 128) to pad the embedding",
        )
    check.need(
        arch.ffn_hidden_size % tp == 0,
        f"{tp_field}={tp}: {arch_field}.ffn_hidden_size={arch.ffn_hidden_size} is not divisible by it",
    )


# ---------------------------------------------------------------- engines


def _engines(cfg: RunConfig) -> list[tuple[str, EngineConfig]]:
    engines = [("rollout.engine", cfg.rollout.engine)]
    engines += [(f"opponents.{i}.engine", o.engine) for i, o in enumerate(cfg.opponents)]
    if cfg.judge.kind == "llm":
        engines.append(("judge.engine", cfg.judge.engine))
    return engines


def _check_layer_specs(cfg: RunConfig, check: _Check) -> None:
    check.need(cfg.model.layer_spec != "te" or cfg.cluster.device == "cuda",
               "model.layer_spec=te: transformer-engine's layers run on cuda only; use local (or auto) with cluster.device=cpu")
    others = [(f"opponents.{i}.model", o.model) for i, o in enumerate(cfg.opponents)]
    others += [("judge.model", cfg.judge.model)] if cfg.judge.model is not None else []
    for where, model in others:
        check.need(model.layer_spec == "auto", f"{where}.layer_spec={model.layer_spec}: only the trained policy is built with "
                                               f"megatron-core layers (frozen players run in vLLM); leave it at auto")


def _resolve_engine_defaults(cfg: RunConfig) -> None:
    """enforce_eager None -> eager on CPU (vLLM's CPU backend has no CUDA graphs), graphs on CUDA."""
    for engine in (cfg.rollout.engine, *(o.engine for o in cfg.opponents), cfg.judge.engine):
        if engine.enforce_eager is None:
            engine.enforce_eager = cfg.cluster.device == "cpu"


def _engine_model(cfg: RunConfig, where: str) -> ModelConfig | None:
    if where == "rollout.engine":
        return cfg.model
    if where == "judge.engine":
        return cfg.judge.model
    return cfg.opponents[int(where.split(".")[1])].model


def _check_engines(cfg: RunConfig, check: _Check) -> None:
    world = trainer_world_size(cfg)
    trainer_nodes = cfg.cluster.trainer_nodes or cfg.cluster.nodes
    taken: dict[tuple[int, int | str], str] = {}  # (node, device or "port P") -> the engine holding it
    for where, engine in _engines(cfg):
        model = _engine_model(cfg, where)
        if model is not None and model.arch is not None:  # vLLM pads the vocab itself
            arch_field = "model.arch" if where == "rollout.engine" else where.removesuffix(".engine") + ".model.arch"
            _check_arch_tp(model.arch, engine.tp, f"{where}.tp", arch_field, check, check_vocab=False, replicate_kv_heads=True)
        if where == "rollout.engine":
            _check_policy_engine(engine, world // slice_count(cfg), check)
            continue
        _check_launch(where, engine, world, check)
        if engine.placement == "colocated":
            check.need(
                engine.num_devices <= cfg.cluster.devices_per_node,
                f"{where}: a colocated {where.split('.')[0].rstrip('s')} engine shares the first node's devices: tp*dp = "
                f"{engine.num_devices} > cluster.devices_per_node={cfg.cluster.devices_per_node}; lower its tp/dp or use "
                f"placement=dedicated",
            )
            continue
        if not check.need(
            trainer_nodes <= engine.node < cfg.cluster.nodes,
            f"{where}.node={engine.node}: dedicated engines go on non-trainer nodes "
            f"{trainer_nodes}..{cfg.cluster.nodes - 1}; set cluster.trainer_nodes or use placement=colocated",
        ):
            continue
        last = engine.first_device + engine.num_devices
        if not check.need(
            engine.first_device >= 0 and last <= cfg.cluster.devices_per_node,
            f"{where}: devices {engine.first_device}..{last - 1} do not fit in cluster.devices_per_node={cfg.cluster.devices_per_node}",
        ):
            continue
        if engine.port is not None and engine.server_url is None:
            other = taken.setdefault((engine.node, f"port {engine.port}"), where)
            if other != where:
                check.problems.append(f"{where}: port {engine.port} on node {engine.node} is already used by {other}; "
                                      f"give it another {where}.port")
        for device in range(engine.first_device, last):
            other = taken.setdefault((engine.node, device), where)
            if other != where:
                check.problems.append(f"{where}: node {engine.node} device {device} is already used by {other}; move first_device")
                break


def _check_policy_engine(engine: EngineConfig, world: int, check: _Check) -> None:
    """The policy's engine is colocated and in-process: one shard per trainer rank (external_launcher); ``world``:
    the ranks of one trainer (a slice of the world with algorithm.sparta.slices)."""
    check.need(
        engine.placement == "colocated" and engine.launch != "server" and engine.server_url is None,
        "rollout.engine: the policy's engine is colocated with the trainer, inside its processes (weights are "
        "resharded into it in memory); set rollout.engine.placement=colocated, launch=auto and no server_url",
    )
    check.need(
        engine.num_devices == world,
        f"rollout.engine: colocated engine spans tp*dp = {engine.tp}*{engine.dp} = {engine.num_devices} ranks but the "
        f"trainer has {world} (the world, or one slice of it); set rollout.engine.dp={max(world // engine.tp, 1)} "
        f"(one engine shard per trainer rank)",
    )


def _check_launch(where: str, engine: EngineConfig, world: int, check: _Check) -> None:
    """Opponents and the judge: in-process engines only in a single-process run."""
    check.need(
        not (engine.launch == "in_process" and world > 1),
        f"{where}.launch=in_process: an in-process vLLM engine hangs inside a multi-rank world ({world} trainer ranks); "
        f"set {where}.launch=server (or auto: a server process started by the run)",
    )
    check.need(
        engine.server_url is None or engine.launch != "in_process",
        f"{where}.server_url is set but launch=in_process; set launch=server (or auto) to use the server",
    )
    if engine.placement == "dedicated":
        check.need(
            engine.launch != "in_process",
            f"{where}: placement=dedicated runs as a server on its own node; set {where}.launch=auto (or server), or use "
            f"placement=colocated to run it in this process",
        )
        check.need(
            engine.server_url is not None or engine.port is not None,
            f"{where}: a dedicated engine needs {where}.port (`megatron-elo serve --node {engine.node}` starts it there and "
            f"the run connects to it) or {where}.server_url",
        )


# ---------------------------------------------------------------- batches, algorithm, data


def _check_batches(cfg: RunConfig, check: _Check) -> None:
    r, t, dp = cfg.rollout, cfg.trainer, cfg.parallel.dp
    sequences = r.prompts_per_step * r.n_per_prompt
    check.need(
        r.prompts_per_step % dp == 0,
        f"rollout.prompts_per_step={r.prompts_per_step}: not divisible by parallel.dp={dp} (prompts are DP-sharded)",
    )
    check.need(  # a pair recipe's steps take whole pairs, however many its games give (validate_pairs.py)
        cfg.algorithm.name in PAIR_RECIPES or sequences % t.global_batch_size == 0,
        f"trainer.global_batch_size={t.global_batch_size}: must divide the sequences per step "
        f"(rollout.prompts_per_step * rollout.n_per_prompt = {sequences})",
    )
    check.need(
        t.global_batch_size % (t.micro_batch_size * dp) == 0,
        f"trainer.global_batch_size={t.global_batch_size}: must be a multiple of trainer.micro_batch_size * parallel.dp "
        f"= {t.micro_batch_size * dp}",
    )


def _check_algorithm(cfg: RunConfig, check: _Check, check_paths: bool = True) -> None:
    names = [o.name for o in cfg.opponents]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    check.need(not duplicates, f"opponents: names must be unique; repeated: {duplicates}")
    algorithm = cfg.algorithm
    if algorithm.name in ("elo_evolve", "static_pairwise"):
        check.need(bool(cfg.opponents), f"opponents: algorithm.name={algorithm.name} needs at least one opponent")
    if algorithm.name == "static_pairwise":
        check.need(
            algorithm.static_opponent in names,
            f"algorithm.static_opponent: {algorithm.static_opponent!r} is not an opponent name; choose one of {names}",
        )
    reward_model = algorithm.reward_model
    if reward_model is not None:
        check.need(scores_single_answers(cfg), f"algorithm.reward_model: only methods that score answers alone (point, "
                                               f"eva with scorer=absolute, tsr, evolve) read a reward model (got "
                                               f"{algorithm.name}); remove it")
        check.need(not check_paths or (reward_model.path is not None and Path(reward_model.path, "config.json").is_file()),
                   f"algorithm.reward_model.path: {reward_model.path!r} has no config.json; point it at a local HF "
                   f"sequence-classification checkpoint")
    check_pairs(cfg, check.need, check_paths=check_paths)
    check_sparta(cfg, check.need, check_paths=check_paths)
    check_self_improve(cfg, check.need, check_paths=check_paths)
    check_benchmarks(cfg, check.need, check_paths=check_paths)
    for i, name in enumerate(cfg.eval.opponents):
        check.need(name in names, f"eval.opponents.{i}: {name!r} is not an opponent name; choose from {names}")
    check.need(cfg.eval.temperature > 0 or cfg.eval.samples_per_prompt == 1,
               f"eval.samples_per_prompt: greedy evaluation (eval.temperature=0) gives identical samples; set it to 1 "
               f"or set eval.temperature > 0, got {cfg.eval.samples_per_prompt}")
    if cfg.judge.kind == "llm":
        check.need(cfg.judge.model is not None, "judge.model: an LLM judge (judge.kind=llm) needs a model")
        check.need(0 < cfg.judge.max_new_tokens < cfg.judge.engine.max_model_len,
                   f"judge.max_new_tokens: must be in [1, judge.engine.max_model_len={cfg.judge.engine.max_model_len}), "
                   f"got {cfg.judge.max_new_tokens}; the prompt needs room too")
        check.need(cfg.judge.max_answer_tokens >= 1, f"judge.max_answer_tokens: must be >= 1, got {cfg.judge.max_answer_tokens}")
    else:
        check.need(cfg.judge.task is not None, "judge.task: a programmatic judge needs a task (arithmetic)")


def _check_judge_template(cfg: RunConfig, check: _Check, check_paths: bool) -> None:
    if cfg.judge.kind != "llm" or not check_paths:
        return
    from megatron_elo.judges.llm import load_template

    try:
        load_template(cfg.judge.template)
    except (OSError, ValueError) as err:
        check.problems.append(str(err))
    if scores_single_answers(cfg) and cfg.algorithm.reward_model is None:
        from megatron_elo.judges.grading import load_grade_template

        try:
            load_grade_template(cfg.judge.grade_template)
        except (OSError, ValueError) as err:
            check.problems.append(f"judge.grade_template: {err}")


def _check_data(cfg: RunConfig, check: _Check, check_paths: bool) -> None:
    _check_judge_template(cfg, check, check_paths)
    data = cfg.data
    if data.format == "synthetic":
        check.need(
            cfg.judge.kind != "programmatic" or cfg.judge.task == data.synthetic.task,
            f"judge.task={cfg.judge.task!r} must match data.synthetic.task={data.synthetic.task!r}",
        )
        synthetic = data.synthetic
        problems = (synthetic.max_operand + 1) ** 2
        check.need(synthetic.num_eval + synthetic.num_validation < problems,
                   f"data.synthetic.num_eval={synthetic.num_eval} + num_validation={synthetic.num_validation} leave none "
                   f"of the {problems} problems (max_operand={synthetic.max_operand}) for training; lower them")
        return
    offline = cfg.algorithm.name == "pairs_offline"  # its training rows come from algorithm.pairs.path
    if not check.need(offline or data.train_path is not None, f"data.train_path: data.format={data.format} needs a prompts file"):
        return
    check.need(data.eval_path is not None or cfg.eval.num_prompts == 0,
               f"data.eval_path: data.format={data.format} needs held-out prompts for evaluation (or eval.num_prompts=0)")
    check.need(cfg.eval.split != "validation" or data.validation_path is not None,
               "data.validation_path: eval.split=validation evaluates on a validation file; name it")
    check.need(cfg.judge.kind != "programmatic" or data.reference_field is not None,
               "data.reference_field: judge.kind=programmatic checks answers against a reference; name the field that holds it")
    if data.loader == "dali":
        check.need(importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None,
                   "data.loader=dali: NVIDIA DALI is not installed (pip install nvidia-dali-cuda130, or the [dali] extra)")
    paths = {"data.train_path": data.train_path, "data.eval_path": data.eval_path,
             "data.validation_path": data.validation_path}
    for name, path in paths.items():
        if path is None:
            continue
        if check_paths:
            check.need(Path(path).is_file(), f"{name}: file {path!r} does not exist")
        if name.startswith("data.") and not path.endswith((".jsonl", ".parquet", ".json")):
            check.problems.append(f"{name}: {path!r} should end in .jsonl or .parquet (each file is read by its suffix)")
