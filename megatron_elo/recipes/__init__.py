"""Methods as short recipes: each module's ``build(ctx)`` wires stages chosen by the config.

| algorithm.name    | module             | matchmaker                         | games     | signal | loss |
|-------------------|--------------------|------------------------------------|-----------|--------|------|
| elo_evolve        | elo_evolve.py      | Elo-orchestrated, temperature T    | pairwise  | GRPO   | grpo |
| static_pairwise   | static_pairwise.py | one fixed opponent                 | pairwise  | GRPO   | grpo |
| point             | point.py           | none (each answer scored alone)    | absolute  | GRPO   | grpo |
| pairs_online      | pairs_online.py    | tournament of the samples, or Elo  | pairwise  | pairs  | dpo, ipo, simpo, orpo, sppo, inpo |
| pairs_offline     | pairs_offline.py   | none (a pair file)                 | none      | pairs  | dpo, ipo, simpo, orpo |

The step they share is ``games.py``; ``base.py`` holds the registry and the protocol the runner uses.
"""

from megatron_elo.recipes.base import RECIPES, NotSupportedYet, Recipe, build_recipe, recipe_builder

__all__ = ["RECIPES", "NotSupportedYet", "Recipe", "build_recipe", "recipe_builder"]
