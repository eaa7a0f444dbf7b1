"""What the runner needs from a recipe, and the registry of recipes by ``algorithm.name``.

    recipe = build_recipe(ctx)              # the config names the recipe (algorithm.name)
    record = recipe.step(step)              # one step on every rank -> StepRecord
    recipe.evaluator.evaluate(step)         # held-out evaluation (the runner decides when)

A recipe is a short module under ``megatron_elo/recipes/`` with ``build(ctx) -> Recipe``: it picks the
stages (players, matchmaker, judge, signal, loss) from the config and owns the step function; the runner
owns everything around it (cadence, evaluation, checkpoints of every stage in ``stages()``, tracking).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from megatron_elo.evaluation.evaluator import Evaluator
    from megatron_elo.flow import StepRecord
    from megatron_elo.runner.context import RunContext
    from megatron_elo.trainer.step import PolicyTrainer


class NotSupportedYet(RuntimeError):
    """A configuration no recipe runs yet; the message says what to use instead."""


class Recipe(Protocol):
    """One method, wired (see the module docstring)."""

    evaluator: Evaluator

    @property
    def trainer(self) -> PolicyTrainer:
        """The first trained player's trainer (the checkpoints' main shards, the HF export)."""
        ...

    def trainers(self) -> dict[str, PolicyTrainer]:
        """Every trained player's trainer by name, ``trainer`` first (the checkpoint's main shards)."""
        ...

    def stages(self) -> dict[str, object | None]:
        """Every stage it built, by name (None: not on this rank); the runner checkpoints the stateful ones."""
        ...

    def step(self, step: int) -> StepRecord:
        """Step ``step`` (0-based) on every rank; the driver's record carries everything it produced."""
        ...

    def after_resume(self) -> None:
        """Bring engines up to the restored weights (collective)."""
        ...

    def undo_partial_step(self) -> None:
        """Put back what a step that failed before its update had taken (the prompts it drew), so that
        a checkpoint written now resumes with that same step."""
        ...

    def ratings(self) -> dict[str, float]:
        """Current Elo ratings, the trained player first ({} when the method keeps none)."""
        ...

    def report(self, out: Path) -> dict:
        """The method's own artifacts under ``out`` (driver, at the end); what it adds to the run's summary."""
        ...


RECIPES: dict[str, str] = {"elo_evolve": "megatron_elo.recipes.elo_evolve",
                           "static_pairwise": "megatron_elo.recipes.static_pairwise",
                           "point": "megatron_elo.recipes.point",
                           "pairs_online": "megatron_elo.recipes.pairs_online",
                           "pairs_offline": "megatron_elo.recipes.pairs_offline",
                           "sparta": "megatron_elo.recipes.sparta",
                           "eva": "megatron_elo.recipes.eva",
                           "tsr": "megatron_elo.recipes.tsr",
                           "evolve": "megatron_elo.recipes.evolve"}


def recipe_builder(name: str) -> Callable[[RunContext], Recipe]:
    """The ``build`` function of the recipe called ``name``."""
    if name not in RECIPES:
        raise ValueError(f"algorithm.name: {name!r} is not a recipe; choose one of {sorted(RECIPES)}")
    return import_module(RECIPES[name]).build


def build_recipe(ctx: RunContext) -> Recipe:
    """The recipe the config names (``algorithm.name``), built from ``ctx``."""
    return recipe_builder(ctx.cfg.algorithm.name)(ctx)
