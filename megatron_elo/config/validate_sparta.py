"""Checks of SPARTA's settings (``players``, ``algorithm.sparta``), called by ``validate``."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from megatron_elo.config.schema import ModelConfig, RunConfig

SPARTA = "sparta"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
DEFAULT_SCORE_TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "sparta" / "score.txt"


def player_model(cfg: RunConfig, index: int) -> ModelConfig:
    """Player ``index``'s model: ``cfg.model`` (its architecture, dtype, tokenizer settings) with the player's weights."""
    return replace(cfg.model, path=cfg.players[index].path)


def slice_count(cfg: RunConfig) -> int:
    """How many slices of ``parallel.*`` the trainer world holds side by side (SPARTA's algorithm.sparta.slices, at
    least 1 so that an invalid value is reported, not divided by; 1 for every other method)."""
    return max(cfg.algorithm.sparta.slices, 1) if cfg.algorithm.name == SPARTA else 1


def score_template_path(cfg: RunConfig) -> Path:
    """The panel's scoring template: algorithm.sparta.score_template, else the built-in one."""
    chosen = cfg.algorithm.sparta.score_template
    return Path(chosen) if chosen is not None else DEFAULT_SCORE_TEMPLATE


def check_sparta(cfg: RunConfig, need, *, check_paths: bool) -> None:
    """Record every problem of ``cfg``'s tribe settings with ``need(condition, message)``."""
    if cfg.algorithm.name != SPARTA:
        need(not cfg.players, f"players: only algorithm.name=sparta trains a tribe of players (got {cfg.algorithm.name}); "
                              f"remove players or set algorithm.name=sparta")
        return
    sparta, players = cfg.algorithm.sparta, cfg.players
    names = [p.name for p in players]
    need(len(players) >= 3, f"players: a SPARTA tribe needs at least 3 players (two duel, the others judge), got {len(players)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    need(not repeated, f"players: names must be unique; repeated: {repeated}")
    clash = sorted(set(names) & {o.name for o in cfg.opponents})
    need(not clash, f"players: {clash} are also opponent names; rename them (metrics and answer stores are keyed by name)")
    for i, player in enumerate(players):
        need(bool(_NAME.fullmatch(player.name)), f"players.{i}.name: {player.name!r} names its shard files and export; use "
                                                 f"letters, digits, '.', '_' or '-'")
        need(0.0 <= player.judge_noise <= 1.0, f"players.{i}.judge_noise: must be in [0, 1], got {player.judge_noise}")
        need(player.lr is None or player.lr > 0, f"players.{i}.lr: must be > 0, got {player.lr}")
        need(player.judge_noise == 0 or sparta.panel == "checker",
             f"players.{i}.judge_noise: only the checker panel adds noise (algorithm.sparta.panel=checker); set it to 0")
    need(0.0 <= sparta.p_random <= 1.0, f"algorithm.sparta.p_random: must be in [0, 1], got {sparta.p_random}")
    need(sparta.nearest >= 1, f"algorithm.sparta.nearest: must be >= 1, got {sparta.nearest}")
    need(sparta.slices >= 1 and len(players) % max(sparta.slices, 1) == 0,
         f"algorithm.sparta.slices={sparta.slices}: must be >= 1 and divide the {len(players)} players (each slice "
         f"time-shares the same number of them); pick a divisor of {len(players)}")
    need(cfg.rollout.n_per_prompt == 1, f"rollout.n_per_prompt={cfg.rollout.n_per_prompt}: each duellist answers an "
                                        f"instruction once; set it to 1")
    need(cfg.judge.noise == 0, "judge.noise: a SPARTA run's judge only evaluates (noise-free); the panel's noise is each "
                               "player's judge_noise: set judge.noise to 0")
    need(not cfg.rollout.overlap_judging, "rollout.overlap_judging: a SPARTA iteration judges, then trains; set it to false")
    need(cfg.eval.benchmark is None, "eval.benchmark: a SPARTA run evaluates each player against the eval opponents; "
                                     "run the benchmark on the players' exports (megatron-elo eval --models NAME=PATH)")
    need(cfg.eval.num_prompts == 0 or bool(cfg.opponents),
         "opponents: a SPARTA run evaluates each player against a fixed reference; add one (an opponent) or set "
         "eval.num_prompts=0")
    if sparta.panel == "checker":
        checkable = cfg.data.format == "synthetic" or cfg.data.reference_field is not None
        need(checkable, "algorithm.sparta.panel=checker: needs checkable answers (data.format=synthetic, or "
                        "data.reference_field); use panel=llm")
        return
    need(0 < sparta.score_max_new_tokens < cfg.rollout.engine.max_model_len,
         f"algorithm.sparta.score_max_new_tokens: must be in [1, rollout.engine.max_model_len="
         f"{cfg.rollout.engine.max_model_len}), got {sparta.score_max_new_tokens}")
    template = score_template_path(cfg)
    if not check_paths:
        return
    if not need(template.is_file(), f"algorithm.sparta.score_template: file {str(template)!r} does not exist"):
        return
    text = template.read_text()
    missing = [field for field in ("{question}", "{answer}") if field not in text]
    need(not missing, f"algorithm.sparta.score_template: {str(template)!r} lacks {missing}")
