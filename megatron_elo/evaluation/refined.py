"""EVOLVE's evaluation: the held-out games of the direct answers and of each refinement link's answers.

    evaluator = RefiningEvaluator(refiner=refiner, chain=2, **evaluator_arguments)   # build_evaluator does this for evolve
    result = evaluator.evaluate(step)     # result.win_rate: the direct answers'; result.per_player: direct, refined_1, ...

The direct answers are ``Evaluator``'s (same prompts, samples and seeds); link c refines each answer of link
c - 1 once at the same sampling settings (its own seed), and every link plays the same games against the
eval opponents, judged as answers to the original prompts.
"""

from __future__ import annotations

from dataclasses import replace

from megatron_elo.data.refine import Refiner, refine_chain
from megatron_elo.evaluation.evaluator import EvalResult, Evaluator
from megatron_elo.flow import POLICY, PromptBatch, Response
from megatron_elo.utils.seeds import stable_seed


class RefiningEvaluator(Evaluator):
    """See the module docstring."""

    def __init__(self, *, refiner: Refiner, chain: int, **evaluator):
        super().__init__(**evaluator)
        self.refiner, self.chain = refiner, chain

    def evaluate(self, step: int) -> EvalResult:
        """Direct answers, then ``chain`` refinements of each, the games of every link (collective)."""
        settings = self.sampling_settings()
        answers = self.sampler.respond(self.prompts, self.token_ids, settings, player=POLICY)

        def respond(batch: PromptBatch, link: int) -> list[list[Response]]:
            once = replace(settings, n=1, seed=stable_seed(self.config.seed, "eval", "refine", link))
            return self.sampler.respond(batch.prompts, batch.token_ids, once, player=POLICY)

        links, _ = refine_chain(self.refiner, respond, self.prompts, answers, self.chain)
        results = self.world.on_driver(lambda: [self.judge_answers(step, link) for link in links],
                                       waiting_for=f"the driver's evaluation games at step {step}")
        direct = results[0]
        return replace(direct, per_player={"direct": direct.win_rate,
                                           **{f"refined_{c}": r.win_rate for c, r in enumerate(results[1:], start=1)}})
