"""EVOLVE's "refine this draft" prompts: the template filled with a prompt and one of its answers.

    refiner = Refiner(template_text, tokenizer, max_tokens=cfg.rollout.max_prompt_tokens)
    batch = refiner.batch(prompts, drafts, link=1)   # P * n prompts, prompt-major: draft j of prompt i at i * n + j
    links, batches = refine_chain(refiner, respond, prompts, drafts, chain=2)   # [drafts, link 1, link 2], [P][n] each

A refine prompt keeps its problem's reference (the refined answer is judged as an answer to the original
prompt) and gets the id ``<prompt id>#r<link>.<j>``; one over ``max_tokens`` gets the longest start of its
draft that fits (the request and the template stay whole; counted in ``truncated``), or, when even an empty
draft does not fit, its last ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        made, ids = [], []
        for prompt, group in zip(prompts, drafts, strict=True):
            for draft in group:
                refine, row = self._fitted(prompt, draft, link)
                made.append(refine)
                ids.append(row)
        return PromptBatch(prompts=tuple(made), token_ids=tuple(ids))

    def _fitted(self, prompt: Prompt, draft: Response, link: int) -> tuple[Prompt, tuple[int, ...]]:
        """The refine prompt and its ids within ``max_tokens`` (see the module docstring)."""
        refine = self.prompt(prompt, draft, link=link)
        row = tuple(self.tokenizer.encode_prompt(refine))
        if self.max_tokens is None or len(row) <= self.max_tokens:
            return refine, row
        self.truncated += 1
        fits = lambda chars: len(self.tokenizer.encode_prompt(self.prompt(prompt, replace(draft, text=draft.text[:chars]), link=link))) <= self.max_tokens  # noqa: E731
        if not fits(0):
            return refine, row[-self.max_tokens:]
        low, high = 0, len(draft.text)  # fits(low), not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        shortened = self.prompt(prompt, replace(draft, text=draft.text[:low]), link=link)
        return shortened, tuple(self.tokenizer.encode_prompt(shortened))


def regroup(flat: Sequence[Sequence[Response]], prompts: Sequence[Prompt], *, n: int) -> list[list[Response]]:
    """[P * n][1] refinements (one per draft, prompt-major) -> [P][n] answers to the original ``prompts``
    (their prompt ids), each keeping its draft's sample index."""
    if len(flat) != len(prompts) * n:
        raise ValueError(f"{len(flat)} refinements for {len(prompts)} prompts x {n} drafts")
    return [[replace(flat[i * n + j][0], prompt_id=p.prompt_id, sample_index=j) for j in range(n)]
            for i, p in enumerate(prompts)]


def refine_chain(refiner: Refiner, respond: Callable[[PromptBatch, int], Sequence[Sequence[Response]]], prompts: Sequence[Prompt],
                 drafts: list[list[Response]], chain: int) -> tuple[list[list[list[Response]]], list[PromptBatch]]:
    """([drafts, link 1, ..., link chain] as [P][n] answers to ``prompts``, the refine batches of links 1..chain);
    ``respond(batch, link)`` gives one refinement per prompt of ``batch`` ([P * n][1])."""
    links, batches = [drafts], []
    for link in range(1, chain + 1):
        batch = refiner.batch(prompts, links[-1], link=link)
        links.append(regroup(respond(batch, link), prompts, n=len(drafts[0])))
        batches.append(batch)
    return links, batches
