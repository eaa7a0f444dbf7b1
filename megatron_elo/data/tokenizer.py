"""Prompt text -> the token ids a player is asked to continue, and its answer ids -> text.

Every player (policy, each opponent) has its own tokenizer: an opponent of another family reads the
same prompt through its own chat template. ``tasks.arithmetic.CharTokenizer`` is the synthetic task's
(no template); ``ChatTokenizer`` wraps a Hugging Face tokenizer directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from megatron_elo.data.prompts import prompt_messages
from megatron_elo.flow import Prompt


class PromptTokenizer(Protocol):
    """What the loop needs from a player's tokenizer."""

    eos_id: int
    pad_id: int

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """The ids the player continues (chat template applied when the tokenizer has one)."""

    def encode_answer(self, text: str) -> list[int]:
        """An answer's ids as the player would have sampled them (no special tokens, no EOS)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Answer ids -> text, stopping at EOS, special tokens dropped."""


class ChatTokenizer:
    """A Hugging Face tokenizer (directory on disk), with or without its chat template."""

    def __init__(self, path: str, *, apply_chat_template: bool = True, system_prompt: str | None = None,
                 template_kwargs: dict | None = None):
        import transformers

        self.hf = transformers.AutoTokenizer.from_pretrained(path)
        if apply_chat_template and not self.hf.chat_template:
            raise ValueError(f"{path}: the tokenizer has no chat template; set data.apply_chat_template=false "
                             "or point model.tokenizer at one that has it")
        if self.hf.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has no eos token; generation could not stop")
        self.apply_chat_template, self.system_prompt = apply_chat_template, system_prompt
        self.template_kwargs = dict(template_kwargs or {})  # model.chat_template_kwargs, e.g. enable_thinking
        self.eos_id = self.hf.eos_token_id
        self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_id

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Chat template with the generation prompt (``add_generation_prompt``), or the raw text."""
        if not self.apply_chat_template:
            return self.hf.encode(prompt.text, add_special_tokens=True)
        rendered = self.hf.apply_chat_template(prompt_messages(prompt, system_prompt=self.system_prompt), tokenize=False,
                                               add_generation_prompt=True, **self.template_kwargs)
        return self.hf.encode(rendered, add_special_tokens=False)  # the template already holds the special tokens

    def encode_answer(self, text: str) -> list[int]:
        """The answer's ids without special tokens (the caller ends it with EOS)."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first EOS, special tokens dropped."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.hf.decode(ids, skip_special_tokens=True)


def player_tokenizer(data, model) -> PromptTokenizer:
    """A player's prompt tokenizer (``data``: the run's DataConfig, ``model``: the player's ModelConfig):
    the synthetic task's characters, or the player's own HF tokenizer with its chat template."""
    if data.format == "synthetic":
        from megatron_elo.tasks.arithmetic import CharTokenizer

        return CharTokenizer()
    return ChatTokenizer(model.tokenizer or model.path, apply_chat_template=data.apply_chat_template,
                         system_prompt=data.system_prompt, template_kwargs=model.chat_template_kwargs)
