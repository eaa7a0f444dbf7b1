"""A point-wise reward model as the judge of single answers (``algorithm.reward_model``, the paper's
point-based baseline): an HF sequence-classification checkpoint scores prompt + answer.

    judge = RewardModelJudge(model_dir, device="cpu", dtype="fp32")
    verdicts = judge.judge(games, rng)          # Verdict.score = the model's scalar output per single-answer game

The conversation (the prompt's turns, ``data.system_prompt``, then the answer as the assistant turn) is
rendered with the reward model's own chat template when it has one, else prompt text + answer; rows
are right-padded in batches of ``batch_size`` (the model reads the last non-pad token). A pairwise game
is not its to decide: invalid, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from megatron_elo.data.prompts import prompt_messages
from megatron_elo.flow import Game, Verdict
from megatron_elo.judges.base import judge_in_one_batch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RewardModelJudge:
    """Scores single answers with a sequence classifier (the ``Judge`` protocol)."""

    scores_single_answers = True

    def __init__(self, model_dir: str, *, device: str = "cpu", dtype: str = "fp32", batch_size: int = 16,
                 system_prompt: str | None = None, template_kwargs: dict | None = None):
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_dir, torch_dtype=TORCH_DTYPES[dtype]).to(device).eval()
        if self.model.config.pad_token_id is None:  # it finds each row's last token through the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.batch_size = device, batch_size
        self.system_prompt, self.template_kwargs = system_prompt, dict(template_kwargs or {})

    def text(self, game: Game) -> str:
        """What the reward model reads for ``game``: the conversation with the policy's answer last."""
        if not self.tokenizer.chat_template:
            return f"{game.prompt.text}{game.policy.text}"
        turns = prompt_messages(game.prompt, system_prompt=self.system_prompt) + [
            {"role": "assistant", "content": game.policy.text}]
        return self.tokenizer.apply_chat_template(turns, tokenize=False, **self.template_kwargs)

    @torch.no_grad()
    def scores(self, texts: Sequence[str]) -> list[float]:
        """The model's scalar output for each text (batched, right-padded)."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
            out += self.model(**encoded).logits[:, 0].float().cpu().tolist()
        return out

    def judge(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """A score per single-answer game; pairwise games are invalid (a reward model scores one answer)."""
        alone = [g for g in games if g.opponent is None]
        scored = dict(zip((g.game_id for g in alone), self.scores([self.text(g) for g in alone]), strict=True))
        return [Verdict(game_id=g.game_id, score=scored[g.game_id], detail="reward model") if g.game_id in scored
                else Verdict(game_id=g.game_id, valid=False, detail="a reward model scores single answers, not pairs")
                for g in games]

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator | None = None) -> list[Verdict]:
        """All batches in one, in game-id order."""
        return judge_in_one_batch(self, batches, rng)

    def metrics(self) -> dict[str, float]:
        """No statistics of its own."""
        return {}

    def close(self) -> None:
        """Nothing to stop (the model lives in this process)."""
