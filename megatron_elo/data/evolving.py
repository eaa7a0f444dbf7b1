"""eva's prompt source: the data set's prompts mixed with prompts a creator evolved from the most informative ones.

    source = EvolvingPrompts(PromptSource(...), creator, eva_config, seed=1)
    batch = source.next_batch(16)                          # evolved_share from the buffer (while it has them), rest original
    metrics = source.observe(batch, rewards, valid, step)  # informativeness -> draw prompts -> creator's rewrites -> buffer

Informativeness of a prompt is the spread of its samples' rewards (max - min, max - mean or variance);
``evolve_fraction`` of a batch's prompts are drawn without replacement with weights proportional to the
min-max-normalised informativeness (the least informative prompt weighs 0; all equal: uniform), and the
creator rewrites each ``rewrites`` times. Evolved prompts wait in a FIFO buffer (the oldest dropped past
``buffer_size``) and are trained on once; evolved prompts are evolved again like any other. The buffer
and every evolved prompt with its parent's id are in ``state_dict`` (checkpointed) and written as a data
file at the end (``write``).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from megatron_elo.config.self_improve_schema import EvaConfig
from megatron_elo.data.source import PromptSource, fit_prompt
from megatron_elo.flow import Prompt, PromptBatch


@dataclass(frozen=True, kw_only=True)
class EvolvedPrompt:
    """One prompt the creator made, with where it came from."""

    prompt: Prompt
    parent_id: str
    step: int  # the step whose rewards chose its parent (0-based)
    template: str  # the creator's rewrite: a template name, or the programmatic variant


def informativeness(rewards: np.ndarray, valid: np.ndarray, *, kind: str) -> np.ndarray:
    """[P] spread of each prompt's valid rewards ([P, n]): max_min, max_mean or variance; 0 with < 2 valid."""
    out = np.zeros(rewards.shape[0])
    for p in range(rewards.shape[0]):
        mine = rewards[p, valid[p]]
        if len(mine) < 2:
            continue
        out[p] = {"max_min": lambda r: r.max() - r.min(), "max_mean": lambda r: r.max() - r.mean(),
                  "variance": lambda r: r.var()}[kind](mine)
    return out


def evolution_weights(info: np.ndarray) -> np.ndarray:
    """[P] selection probabilities: min-max-normalised informativeness, summing to 1 (uniform when all equal)."""
    spread = info.max() - info.min()
    weights = np.ones_like(info) if spread == 0 else (info - info.min()) / spread
    return weights / weights.sum()


def pick_for_evolution(info: np.ndarray, *, fraction: float, rng: np.random.Generator) -> list[int]:
    """round(fraction * P) (at least 1) prompt indices drawn without replacement by ``evolution_weights``,
    sorted; fewer when fewer prompts have a non-zero weight."""
    weights = evolution_weights(info)
    count = min(max(round(fraction * len(info)), 1), int((weights > 0).sum()))
    return sorted(int(i) for i in rng.choice(len(info), size=count, replace=False, p=weights))


class ArithmeticCreator:
    """The arithmetic task's creator: harder variants of a+b+...= (one more term, or an operand ten times
    wider plus a digit), their references recomputed; at most ``max_terms`` terms of < ``max_operand``."""

    name = "programmatic"

    def __init__(self, *, max_terms: int = 4, max_operand: int = 1000):
        self.max_terms, self.max_operand = max_terms, max_operand

    def rewrite(self, prompts: list[Prompt], *, rewrites: int, step: int, seed: int) -> list[list[EvolvedPrompt]]:
        """``rewrites`` variants of every prompt (variant j: more terms for even j, a wider operand for odd j,
        the other when that one is at its limit), seeded by (seed, step, prompt id)."""
        out = []
        for prompt in prompts:
            rng = np.random.default_rng([seed, step, *prompt.prompt_id.encode()])
            terms = [int(t) for t in prompt.text.rstrip("=").split("+")]
            variants = []
            for j in range(rewrites):
                changed, kind = self._variant(list(terms), j, rng)
                text = "+".join(map(str, changed)) + "="
                child = Prompt(prompt_id=f"{prompt.prompt_id}>{step}.{j}", text=text, reference=str(sum(changed)))
                variants.append(EvolvedPrompt(prompt=child, parent_id=prompt.prompt_id, step=step, template=kind))
            out.append(variants)
        return out

    def _variant(self, terms: list[int], j: int, rng: np.random.Generator) -> tuple[list[int], str]:
        widen_at = int(rng.integers(0, len(terms)))
        widened = terms[widen_at] * 10 + int(rng.integers(0, 10))
        can_add, can_widen = len(terms) < self.max_terms, widened < self.max_operand
        if (j % 2 == 0 and can_add) or (can_add and not can_widen):
            return [*terms, int(rng.integers(0, 21))], "add_term"
        if can_widen:
            terms[widen_at] = widened
            return terms, "widen"
        return terms, "unchanged"


class TemplateCreator:
    """An LLM creator: an opponent's engine answers each rewrite template filled with the prompt; its reply
    (stripped) is the evolved prompt (no reference); an empty reply makes none (counted)."""

    def __init__(self, opponents, name: str, templates: list[Path]):
        self.opponents, self.name = opponents, name
        self.templates = [(path.stem, path.read_text()) for path in templates]
        self.empty = 0

    def rewrite(self, prompts: list[Prompt], *, rewrites: int, step: int, seed: int) -> list[list[EvolvedPrompt]]:
        """Rewrite j of each prompt from template j mod the templates (one engine call for all of them)."""
        asks = [(prompt, j, *self.templates[j % len(self.templates)]) for prompt in prompts for j in range(rewrites)]
        requests = [Prompt(prompt_id=f"{prompt.prompt_id}>{step}.{j}", text=template.replace("{prompt}", prompt.text))
                    for prompt, j, _, template in asks]
        replies = self.opponents.answers(self.name, requests, seed=seed) if requests else {}
        out: dict[str, list[EvolvedPrompt]] = {p.prompt_id: [] for p in prompts}
        for (prompt, _, kind, _), request in zip(asks, requests, strict=True):
            text = replies[request.prompt_id].text.strip()
            self.empty += not text
            if text:
                child = Prompt(prompt_id=request.prompt_id, text=text)
                out[prompt.prompt_id].append(EvolvedPrompt(prompt=child, parent_id=prompt.prompt_id, step=step, template=kind))
        return [out[p.prompt_id] for p in prompts]


def _prompt_state(prompt: Prompt) -> dict:
    return {"prompt_id": prompt.prompt_id, "text": prompt.text, "reference": prompt.reference}


def _evolved_state(item: EvolvedPrompt) -> dict:
    return {**asdict(item), "prompt": _prompt_state(item.prompt)}


def _evolved_from(state: dict) -> EvolvedPrompt:
    return EvolvedPrompt(**{**state, "prompt": Prompt(**state["prompt"])})


class EvolvingPrompts:
    """The prompt source of an eva run (see the module docstring); driver only."""

    def __init__(self, source: PromptSource, creator, config: EvaConfig, *, seed: int):
        self.source, self.creator, self.config, self.seed = source, creator, config, seed
        self.buffer: deque[EvolvedPrompt] = deque()
        self.created: list[EvolvedPrompt] = []
        self.dropped_full = self.dropped_overlong = 0
        self.last_evolved_ids: set[str] = set()  # the latest batch's prompts that came from the buffer

    def next_batch(self, size: int) -> PromptBatch:
        """``evolved_share`` of ``size`` from the buffer (oldest first, while it has them), the rest original."""
        want = math.floor(self.config.evolved_share * size + 0.5) if self.buffer else 0
        prompts, ids = [], []
        while self.buffer and len(prompts) < want:
            item = self.buffer.popleft()
            fitted = self._fit(item.prompt)
            if fitted is not None:
                prompts.append(item.prompt)
                ids.append(fitted)
        self.last_evolved_ids = {p.prompt_id for p in prompts}
        rest = self.source.next_batch(size - len(prompts))
        return PromptBatch(prompts=(*prompts, *rest.prompts), token_ids=(*ids, *rest.token_ids))

    def _fit(self, prompt: Prompt) -> tuple[int, ...] | None:
        ids = tuple(self.source.tokenizer.encode_prompt(prompt))
        if self.source.max_tokens is None:
            return ids
        overlong = "drop" if self.source.overlong == "error" else self.source.overlong  # a creator's long prompt: never fatal
        fitted = fit_prompt(prompt, ids, max_tokens=self.source.max_tokens, overlong=overlong)
        self.dropped_overlong += fitted is None
        return fitted

    def observe(self, batch: PromptBatch, rewards: np.ndarray, valid: np.ndarray, step: int) -> dict[str, float]:
        """Evolve the step's most informative prompts into the buffer; the step's eva metrics."""
        info = informativeness(rewards, valid, kind=self.config.informativeness)
        rng = np.random.default_rng([self.seed, step, 11])
        picked = pick_for_evolution(info, fraction=self.config.evolve_fraction, rng=rng)
        children = self.creator.rewrite([batch.prompts[i] for i in picked], rewrites=self.config.rewrites, step=step,
                                        seed=self.seed)
        for group in children:
            for item in group:
                if len(self.buffer) == self.config.buffer_size:
                    self.buffer.popleft()
                    self.dropped_full += 1
                self.buffer.append(item)
                self.created.append(item)
        return {**self._batch_metrics(batch, rewards, valid, info), "eva/evolved_this_step": float(sum(map(len, children)))}

    def _batch_metrics(self, batch: PromptBatch, rewards: np.ndarray, valid: np.ndarray, info: np.ndarray) -> dict[str, float]:
        evolved = np.array([p.prompt_id in self.last_evolved_ids for p in batch.prompts])
        metrics = {"eva/informativeness_mean": float(info.mean()), "eva/informativeness_max": float(info.max()),
                   "eva/informativeness_p50": float(np.median(info)), "eva/evolved_prompts": float(evolved.sum()),
                   "eva/buffer": float(len(self.buffer)), "eva/created": float(len(self.created))}
        for name, rows in (("evolved", evolved), ("original", ~evolved)):
            mine = valid & rows[:, None]
            metrics[f"eva/{name}_reward_mean"] = float(rewards[mine].mean()) if mine.any() else float("nan")
        return metrics

    def solve_rates(self, batch: PromptBatch, texts: list[list[str]]) -> dict[str, float]:
        """Exact answers' share on the batch's evolved and original prompts (checkable prompts only)."""
        out = {}
        for name, is_evolved in (("evolved", True), ("original", False)):
            hits = [t.strip() == p.reference for p, group in zip(batch.prompts, texts, strict=True) for t in group
                    if p.reference is not None and (p.prompt_id in self.last_evolved_ids) == is_evolved]
            out[f"eva/{name}_solve_rate"] = float(np.mean(hits)) if hits else float("nan")
        return out

    def metrics(self) -> dict[str, float]:
        """The wrapped source's counts and the buffer's drops."""
        return {**self.source.metrics(), "eva/dropped_buffer_full": float(self.dropped_full),
                "eva/dropped_overlong": float(self.dropped_overlong), "eva/creator_empty": float(getattr(self.creator, "empty", 0))}

    def state_dict(self) -> dict:
        """The wrapped source's position, the buffer, every evolved prompt and the counts (JSON)."""
        return {"source": self.source.state_dict(), "buffer": [_evolved_state(i) for i in self.buffer],
                "created": [_evolved_state(i) for i in self.created], "dropped_full": self.dropped_full,
                "dropped_overlong": self.dropped_overlong, "last_evolved_ids": sorted(self.last_evolved_ids),
                "creator_empty": int(getattr(self.creator, "empty", 0))}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``."""
        self.source.load_state_dict(state["source"])
        self.buffer = deque(_evolved_from(s) for s in state["buffer"])
        self.created = [_evolved_from(s) for s in state["created"]]
        self.dropped_full, self.dropped_overlong = int(state["dropped_full"]), int(state["dropped_overlong"])
        self.last_evolved_ids = set(state["last_evolved_ids"])
        if hasattr(self.creator, "empty"):
            self.creator.empty = int(state["creator_empty"])

    def write(self, path: Path) -> Path:
        """Every evolved prompt as a jsonl data file (id, prompt, reference, parent_id, step, template)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for item in self.created:
                out.write(json.dumps({"id": item.prompt.prompt_id, "prompt": item.prompt.text, "reference": item.prompt.reference,
                                      "parent_id": item.parent_id, "step": item.step, "template": item.template}) + "\n")
        return path
