"""Where a run's prompts come from: the training prompts in the loader's order, and the held-out set.

    train, held_out = load_prompt_sets(cfg)
    source = PromptSource.from_config(cfg, train, tokenizer)      # default or DALI loader
    batch = source.next_batch(16)                                  # PromptBatch: prompts + the policy's ids

Prompts longer than ``rollout.max_prompt_tokens`` (the policy's tokens) are handled here, the one
place before generation, by ``rollout.overlong_prompt`` (``fit_prompt``): dropped and replaced by the
next ones so the batch keeps its size, cut to their last tokens, or refused; counted.

A later stage can wrap a ``PromptSource`` (eva's creator rewrites and adds prompts) as long as it
keeps ``next_batch`` and the resumable ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig
from megatron_elo.data.loader import PromptLoader
from megatron_elo.data.tokenizer import PromptTokenizer
from megatron_elo.flow import Prompt, PromptBatch
from megatron_elo.utils.logging import get_logger

log = get_logger(__name__)


def load_prompt_sets(cfg: RunConfig) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, evaluation prompts of ``eval.split``) from the synthetic task's disjoint
    splits or the configured files (a file's prompts that also occur in training are warned about)."""
    data, split = cfg.data, cfg.eval.split
    if data.format == "synthetic":
        from megatron_elo.tasks.arithmetic import make_prompts, split_of, split_prompts

        synthetic = data.synthetic
        pairs = split_of(synthetic)
        train = make_prompts(synthetic.num_train, seed=synthetic.seed, pairs=pairs["train"])
        name = "eval" if split == "held_out" else "validation"
        return train, split_prompts(name, pairs[name], seed=synthetic.seed, count=cfg.eval.num_prompts)
    from megatron_elo.data.prompts import PromptFields, read_prompts

    fields = PromptFields(prompt=data.prompt_field, id=data.id_field, reference=data.reference_field)
    train = read_prompts(data.train_path, fields=fields) if data.train_path else []  # pairs_offline: from its pair file
    path = data.eval_path if split == "held_out" else data.validation_path
    evaluated = read_prompts(path, fields=fields)[: cfg.eval.num_prompts] if cfg.eval.num_prompts else []
    seen = {p.text for p in train}
    overlap = sum(p.text in seen for p in evaluated)
    if overlap:
        log.warning("%d of the %d %s prompts (%s) also occur in data.train_path: their win rate is not held out",
                    overlap, len(evaluated), split, path)
    return train, evaluated


class OverlongPrompt(ValueError):
    """A prompt over rollout.max_prompt_tokens with rollout.overlong_prompt=error."""


def fit_prompt(prompt: Prompt, ids: tuple[int, ...], *, max_tokens: int, overlong: str) -> tuple[int, ...] | None:
    """``ids`` when they fit ``max_tokens``; else None (drop), their last ``max_tokens`` (truncate), or
    ``OverlongPrompt`` naming the prompt and the settings (error)."""
    if len(ids) <= max_tokens:
        return ids
    if overlong == "drop":
        return None
    if overlong == "truncate":
        return ids[-max_tokens:]
    raise OverlongPrompt(f"prompt {prompt.prompt_id!r} has {len(ids)} tokens, over rollout.max_prompt_tokens={max_tokens}; "
                         f"raise it (and rollout.engine.max_model_len), or set rollout.overlong_prompt=drop or truncate")


class PromptSource:
    """The training prompts in the seeded per-epoch order, each with the policy's token ids (the DALI
    loader's pre-tokenized ids when it read them, else the tokenizer's, remembered per prompt id), fitted
    to ``max_tokens`` by ``overlong`` (see the module docstring)."""

    def __init__(self, loader: PromptLoader, tokenizer: PromptTokenizer, *, max_tokens: int | None = None,
                 overlong: str = "drop"):
        self.loader, self.tokenizer = loader, tokenizer
        self.max_tokens, self.overlong = max_tokens, overlong
        self.dropped = self.truncated = 0  # overlong prompts so far
        self._ids: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_config(cls, cfg: RunConfig, prompts: list[Prompt], tokenizer: PromptTokenizer) -> PromptSource:
        """``data.loader``: the in-process loader, or DALI over pre-tokenized shards (written on first use)."""
        data = cfg.data
        fitting = dict(max_tokens=cfg.rollout.max_prompt_tokens, overlong=cfg.rollout.overlong_prompt)
        if data.loader == "default":
            return cls(PromptLoader(prompts, seed=cfg.seed, shuffle=data.shuffle), tokenizer, **fitting)
        import torch

        from megatron_elo.data.dali import DaliPromptLoader, write_token_shards

        shards = Path(data.token_shards or Path(cfg.output_dir) / "prompt_tokens")
        if not (shards / "offsets.npy").is_file():
            log.info("pre-tokenizing %d prompts into %s", len(prompts), shards)
            write_token_shards([tokenizer.encode_prompt(p) for p in prompts], shards, prompts=prompts)
        device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        loader = DaliPromptLoader(prompts, shards, batch_size=cfg.rollout.prompts_per_step, seed=cfg.seed,
                                  shuffle=data.shuffle, pad_id=tokenizer.pad_id, device_id=device_id,
                                  encode=tokenizer.encode_prompt)
        return cls(loader, tokenizer, **fitting)

    def token_ids(self, prompt: Prompt) -> tuple[int, ...]:
        """The policy's ids of ``prompt`` (chat template applied)."""
        if prompt.prompt_id not in self._ids:
            self._ids[prompt.prompt_id] = tuple(self.tokenizer.encode_prompt(prompt))
        return self._ids[prompt.prompt_id]

    def next_batch(self, size: int) -> PromptBatch:
        """The next ``size`` usable prompts with their ids; advances the position (past dropped ones too)."""
        prompts: list[Prompt] = []
        ids: list[tuple[int, ...]] = []
        drawn_without_one = 0
        while len(prompts) < size:
            drawn = self._draw(size - len(prompts))
            for prompt in drawn:
                fitted = self._fit(prompt)
                if fitted is not None and len(prompts) < size:
                    prompts.append(prompt)
                    ids.append(fitted)
            drawn_without_one = 0 if prompts else drawn_without_one + len(drawn)
            if drawn_without_one > len(self.loader.prompts):
                raise OverlongPrompt(f"every training prompt is over rollout.max_prompt_tokens={self.max_tokens}; raise it")
        return PromptBatch(prompts=tuple(prompts), token_ids=tuple(ids))

    def _draw(self, count: int) -> list[Prompt]:
        """The loader's next prompts (a DALI pipeline only makes whole batches: the rest of one is skipped)."""
        batch_size = getattr(self.loader, "batch_size", None)
        prompts = self.loader.next_batch(batch_size or count)
        for prompt, row_ids in zip(prompts, getattr(self.loader, "last_ids", []), strict=False):
            self._ids[prompt.prompt_id] = tuple(row_ids)  # the DALI loader's pre-tokenized ids
        return prompts[:count]

    def _fit(self, prompt: Prompt) -> tuple[int, ...] | None:
        ids = self.token_ids(prompt)
        if self.max_tokens is None:
            return ids
        fitted = fit_prompt(prompt, ids, max_tokens=self.max_tokens, overlong=self.overlong)
        self.dropped += fitted is None
        self.truncated += fitted is not None and len(fitted) < len(ids)
        return fitted

    def metrics(self) -> dict[str, float]:
        """Overlong prompts dropped and truncated so far."""
        return {"prompts/overlong_dropped": float(self.dropped), "prompts/overlong_truncated": float(self.truncated)}

    def state_dict(self) -> dict:
        """The loader's position and the overlong counts (JSON)."""
        return {"loader": self.loader.state_dict(), "dropped": self.dropped, "truncated": self.truncated}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``."""
        self.loader.load_state_dict(state["loader"])
        self.dropped, self.truncated = int(state["dropped"]), int(state["truncated"])
