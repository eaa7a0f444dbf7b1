"""EVOLVE's "refine this draft" prompts: the template filled with a prompt and one of its answers.

    refiner = Refiner(template_text, tokenizer, max_tokens=cfg.rollout.max_prompt_tokens)
    batch = refiner.batch(prompts, drafts, link=1)   # P * n prompts, prompt-major: draft j of prompt i at i * n + j

A refine prompt keeps its problem's reference (the refined answer is judged as an answer to the original
prompt) and gets the id ``<prompt id>#r<link>.<j>``; one over ``max_tokens`` keeps its last tokens (the
draft and the template's end) and is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from megatron_elo.data.tokenizer import PromptTokenizer
from megatron_elo.flow import Prompt, PromptBatch, Response


class Refiner:
    """Builds refinement prompts (see the module docstring)."""

    def __init__(self, template: str, tokenizer: PromptTokenizer, *, max_tokens: int | None):
        if "{prompt}" not in template or "{draft}" not in template:
            raise ValueError("the refinement template needs {prompt} and {draft}")
        self.template, self.tokenizer, self.max_tokens = template, tokenizer, max_tokens
        self.truncated = 0

    def prompt(self, prompt: Prompt, draft: Response, *, link: int) -> Prompt:
        """The refine prompt of ``draft`` (an answer to ``prompt``) in chain link ``link`` (1-based)."""
        text = self.template.replace("{prompt}", prompt.text).replace("{draft}", draft.text)
        return Prompt(prompt_id=f"{prompt.prompt_id}#r{link}.{draft.sample_index}", text=text, reference=prompt.reference)

    def batch(self, prompts: Sequence[Prompt], drafts: Sequence[Sequence[Response]], *, link: int) -> PromptBatch:
        """One refine prompt per draft, prompt-major, with the player's (fitted) token ids."""
        made = [self.prompt(p, d, link=link) for p, group in zip(prompts, drafts, strict=True) for d in group]
        ids = []
        for prompt in made:
            row = tuple(self.tokenizer.encode_prompt(prompt))
            if self.max_tokens is not None and len(row) > self.max_tokens:
                row, self.truncated = row[-self.max_tokens:], self.truncated + 1
            ids.append(row)
        return PromptBatch(prompts=tuple(made), token_ids=tuple(ids))


def regroup(flat: Sequence[Sequence[Response]], prompts: Sequence[Prompt], *, n: int) -> list[list[Response]]:
    """[P * n][1] refinements (one per draft, prompt-major) -> [P][n] answers to the original ``prompts``
    (their prompt ids), each keeping its draft's sample index."""
    if len(flat) != len(prompts) * n:
        raise ValueError(f"{len(flat)} refinements for {len(prompts)} prompts x {n} drafts")
    return [[replace(flat[i * n + j][0], prompt_id=p.prompt_id, sample_index=j) for j in range(n)]
            for i, p in enumerate(prompts)]
