"""Methods as short recipes: each module's ``build(ctx)`` wires stages chosen by the config.

| algorithm.name    | module             | matchmaker                         | games     | signal | loss |
|-------------------|--------------------|------------------------------------|-----------|--------|------|
| elo_evolve        | elo_evolve.py      | Elo-orchestrated, temperature T    | pairwise  | GRPO   | grpo |
| static_pairwise   | static_pairwise.py | one fixed opponent                 | pairwise  | GRPO   | grpo |
| point             | point.py           | none (each answer scored alone)    | absolute  | GRPO   | grpo |
| pairs_online      | pairs_online.py    | tournament of the samples, or Elo  | pairwise  | pairs  | dpo, ipo, simpo, orpo, sppo, inpo |
| pairs_offline     | pairs_offline.py   | none (a pair file)                 | none      | pairs  | dpo, ipo, simpo, orpo |
| sparta            | sparta.py          | duels drawn by reputation          | panel     | pairs  | the pair losses |
| eva               | eva.py             | none or Elo (eva.scorer)           | alone / pairwise | pairs  | the pair losses |
| tsr               | tsr.py             | none: M_0 and a look-ahead M_f     | alone     | pairs  | the pair losses |
| evolve            | evolve.py          | none: drafts and their refinements | alone     | pairs  | the pair losses |

The step they share is ``games.py`` (eva, tsr and evolve: ``scored_pairs.py`` beside ``pairs_online.py``);
``base.py`` holds the registry and the protocol the runner uses.
"""

from megatron_elo.recipes.base import RECIPES, NotSupportedYet, Recipe, build_recipe, recipe_builder

__all__ = ["RECIPES", "NotSupportedYet", "Recipe", "build_recipe", "recipe_builder"]
