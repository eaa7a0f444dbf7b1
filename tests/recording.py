"""What the whole-run tests share: a runner whose step records are kept, and a measurement taken right
after a recipe's last step (while its engines are up; the runner closes them when it finishes)."""

from __future__ import annotations

from collections.abc import Callable


def recorded_run(cfg, stop_after: int | None = None):
    """Run ``cfg`` (stopping after ``stop_after`` steps, if given): (runner, summary, every logged StepRecord)."""
    from megatron_elo.runner.runner import Runner

    runner, records = Runner(cfg, stop_after=stop_after), []
    log_step = runner._log_step
    runner._log_step = lambda record, *args: (records.append(record), log_step(record, *args))
    return runner, runner.run(), records


def measure_after_last_step(recipe_class, steps: int, measure: Callable) -> dict:
    """Patch ``recipe_class.step`` so that ``measure(recipe)`` runs after step ``steps - 1``; returns the dict its
    result is stored in (key "value", empty when the run stopped earlier)."""
    step, out = recipe_class.step, {}

    def step_then_measure(recipe, index):
        record = step(recipe, index)
        if index + 1 == steps:
            out["value"] = measure(recipe)
        return record

    recipe_class.step = step_then_measure
    return out


def engine_gap(player) -> float:
    """Mean |engine - trainer| log-prob of a trained player's engine's own samples of 8 problems (0: the engine
    holds the trainer's weights)."""
    from megatron_elo.flow import Prompt, PromptBatch

    prompts = tuple(Prompt(prompt_id=f"gap{i}", text=f"{i}+{i + 1}=") for i in range(8))
    batch = PromptBatch(prompts=prompts, token_ids=tuple(tuple(player.tokenizer.encode_prompt(p)) for p in prompts))
    return player.prepare(batch, player.rollouts(batch, 99), step=99).sampler_gap.mean
