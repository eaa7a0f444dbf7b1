"""The run's judges from its config: the training judge and the evaluation judge.

    judge = build_judge(cfg, world_size=world.size)        # programmatic checker or LLM judge on its engine
    evaluation = build_eval_judge(cfg, lambda: judge)      # noise-free checker when answers are checkable
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from megatron_elo.config.schema import RunConfig
from megatron_elo.config.validate_self_improve import scores_single_answers
from megatron_elo.judges.base import Judge


def build_judge(cfg: RunConfig, *, world_size: int, training: bool = True) -> Judge:
    """The training judge: ``algorithm.reward_model`` when set (scores single answers), else by
    ``judge.kind`` the task's checker with ``judge.noise`` or the LLM judge on its own engine (for
    methods that score answers alone, ``scores_single_answers``: grading them 1-10, ``GradingJudge``; ``training=False``: the ``judge``
    section whatever the reward model, for evaluation's pairs)."""
    reward_model = cfg.algorithm.reward_model
    if training and reward_model is not None:
        from megatron_elo.judges.reward_model import RewardModelJudge

        return RewardModelJudge(reward_model.path, device=cfg.cluster.device, dtype=reward_model.dtype,
                                system_prompt=cfg.data.system_prompt, template_kwargs=reward_model.chat_template_kwargs)
    if cfg.judge.kind == "programmatic":
        from megatron_elo.judges.programmatic import ArithmeticJudge

        return ArithmeticJudge(noise=cfg.judge.noise, swap_positions=cfg.judge.swap_positions)
    from megatron_elo.judges.llm import build_llm_judge

    judge = build_llm_judge(cfg.judge, seed=cfg.seed, cluster=cfg.cluster, world_size=world_size,
                            log_dir=Path(cfg.output_dir) / "engine_logs")
    if training and scores_single_answers(cfg):  # absolute scoring: 1-10 grades, pairs (evaluation) on the same engine
        from megatron_elo.judges.grading import GradingJudge, load_grade_template

        return GradingJudge(pairwise=judge, template=load_grade_template(cfg.judge.grade_template))
    return judge


def answers_are_checkable(cfg: RunConfig) -> bool:
    """Held-out answers can be checked exactly: the synthetic task, or prompts with references for a checker."""
    return cfg.data.format == "synthetic" or cfg.judge.kind == "programmatic"


def build_eval_judge(cfg: RunConfig, training_judge: Callable[[], Judge]) -> Judge:
    """Evaluation's judge of pairs: the exact checker without noise or swaps when answers are checkable,
    else the training judge (``training_judge()``, built on first need; the ``judge`` section's when the
    run trains on a reward model, which cannot compare two answers)."""
    if answers_are_checkable(cfg):
        from megatron_elo.judges.programmatic import ArithmeticJudge

        return ArithmeticJudge(noise=0.0, swap_positions=False)
    if cfg.algorithm.reward_model is not None:
        return build_judge(cfg, world_size=1, training=False)
    return training_judge()
