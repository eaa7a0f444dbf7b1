"""Where a run's prompts come from: the training prompts in the loader's order, and the held-out set.

    train, held_out = load_prompt_sets(cfg)
    source = PromptSource.from_config(cfg, train, tokenizer)      # default or DALI loader
    batch = source.next_batch(16)                                  # PromptBatch: prompts + the policy's ids

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
    """(training prompts, held-out prompts) from the synthetic task or the configured files."""
    data = cfg.data
    if data.format == "synthetic":
        from megatron_elo.tasks.arithmetic import make_prompts

        synthetic = data.synthetic
        train = make_prompts(synthetic.num_train, seed=synthetic.seed, max_operand=synthetic.max_operand)
        held_out = make_prompts(min(cfg.eval.num_prompts, synthetic.num_eval), seed=synthetic.seed,
                                max_operand=synthetic.max_operand, split="eval")
        return train, held_out
    from megatron_elo.data.prompts import PromptFields, read_prompts

    fields = PromptFields(prompt=data.prompt_field, id=data.id_field, reference=data.reference_field)
    return read_prompts(data.train_path, fields=fields), read_prompts(data.eval_path, fields=fields)[: cfg.eval.num_prompts]


class PromptSource:
    """The training prompts in the seeded per-epoch order, each with the policy's token ids (the DALI
    loader's pre-tokenized ids when it read them, else the tokenizer's, remembered per prompt id)."""

    def __init__(self, loader: PromptLoader, tokenizer: PromptTokenizer):
        self.loader, self.tokenizer = loader, tokenizer
        self._ids: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_config(cls, cfg: RunConfig, prompts: list[Prompt], tokenizer: PromptTokenizer) -> PromptSource:
        """``data.loader``: the in-process loader, or DALI over pre-tokenized shards (written on first use)."""
        data = cfg.data
        if data.loader == "default":
            return cls(PromptLoader(prompts, seed=cfg.seed, shuffle=data.shuffle), tokenizer)
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
        return cls(loader, tokenizer)

    def token_ids(self, prompt: Prompt) -> tuple[int, ...]:
        """The policy's ids of ``prompt`` (chat template applied)."""
        if prompt.prompt_id not in self._ids:
            self._ids[prompt.prompt_id] = tuple(self.tokenizer.encode_prompt(prompt))
        return self._ids[prompt.prompt_id]

    def next_batch(self, size: int) -> PromptBatch:
        """The next ``size`` prompts with their ids; advances the position."""
        prompts = self.loader.next_batch(size)
        for prompt, ids in zip(prompts, getattr(self.loader, "last_ids", []), strict=False):
            self._ids[prompt.prompt_id] = tuple(ids)  # the DALI loader's pre-tokenized ids
        return PromptBatch(prompts=tuple(prompts), token_ids=tuple(self.token_ids(p) for p in prompts))

    def state_dict(self) -> dict:
        """The loader's position (JSON)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``."""
        self.loader.load_state_dict(state)
