"""Make tiny models of different strength on the addition task, locally (the CPU demo's players).

One model is trained by supervised fine-tuning on "[BOS]a+b=c[EOS]" (loss on the answer only) and
a snapshot is saved at each requested step count: fewer steps, weaker player.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import hf_config_dict
from megatron_elo.tasks.arithmetic import CharTokenizer, make_prompts
from megatron_elo.utils.logging import get_logger, progress_bar

log = get_logger(__name__)


def sft_batch(tokenizer: CharTokenizer, texts: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, answer) pairs -> tokens [B, S] (PAD-right-padded) and labels [B, S] (-100 outside the answer + EOS)."""
    rows, labels = [], []
    for prompt, answer in texts:
        p = tokenizer.encode_prompt(prompt)
        a = tokenizer.encode(answer) + [tokenizer.eos_id]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows])
    target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return tokens, target


def train_snapshots(arch: ArchConfig, snapshots: Sequence[tuple[str, int]], *, seed: int, batch_size: int = 64,
                    lr: float = 3e-3, max_operand: int = 99, pairs: list[tuple[int, int]] | None = None,
                    show_progress: bool = True) -> list[Path]:
    """Train one model of ``arch`` and save it (HF format) at each (path, step count), on problems drawn
    from ``pairs`` (the training split: held-out problems stay unseen; default every a, b <= max_operand).
    Returns the paths."""
    import transformers

    torch.manual_seed(seed)
    tokenizer = CharTokenizer()
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_config_dict(arch)),
                                                          torch_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ordered = sorted(snapshots, key=lambda s: s[1])
    total = ordered[-1][1]
    data = make_prompts(total * batch_size, seed=seed + 17, max_operand=max_operand, split="sft", pairs=pairs)
    saved, step = [], 0
    with progress_bar(total=total, description="pretraining tiny players", enabled=show_progress) as bar:
        for path, target_steps in ordered:
            while step < target_steps:
                chunk = data[step * batch_size:(step + 1) * batch_size]
                tokens, labels = sft_batch(tokenizer, [(p.text, p.reference) for p in chunk])
                loss = model(input_ids=tokens, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.advance()
                bar.update(loss=loss.item())
            model.save_pretrained(path, safe_serialization=True)
            log.info("saved %s after %d SFT steps (loss %.3f)", path, step, loss.item())
            saved.append(Path(path))
    return saved
