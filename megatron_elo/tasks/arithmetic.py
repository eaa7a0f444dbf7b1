"""A verifiable task for the CPU demo: integer addition, a character tokenizer, and the checker.

    "37+45="  ->  "82"          tokens: [BOS] 3 7 + 4 5 =  |  8 2 [EOS]

A better answer is checkable: its error |answer - truth| is smaller (unparsable answers are worst).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_elo.flow import Prompt

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+-=*? "


@dataclass(frozen=True)
class CharTokenizer:
    """Three special ids (pad 0, bos 1, eos 2), then one id per character of ``CHARS``."""

    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    @property
    def vocab_size(self) -> int:
        """Ids in use (the model's vocabulary may be larger)."""
        return 3 + len(CHARS)

    def encode(self, text: str) -> list[int]:
        """Characters -> ids; raises ValueError naming a character outside ``CHARS``."""
        try:
            return [3 + CHARS.index(ch) for ch in text]
        except ValueError:
            bad = next(ch for ch in text if ch not in CHARS)
            raise ValueError(f"character {bad!r} is not in the task alphabet {CHARS!r}") from None

    def encode_prompt(self, prompt: Prompt | str) -> list[int]:
        """[BOS] + the prompt's characters: what the policy is asked to continue (no chat template)."""
        return [self.bos_id, *self.encode(prompt if isinstance(prompt, str) else prompt.text)]

    def encode_answer(self, text: str) -> list[int]:
        """An answer's characters -> ids (no EOS)."""
        return self.encode(text)

    def decode(self, ids) -> str:
        """Ids -> text, stopping at EOS; ids outside the alphabet become '?'."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            out.append(CHARS[i - 3] if 3 <= i < 3 + len(CHARS) else "?")
        return "".join(out)


SPLITS = ("train", "validation", "eval")


def split_pairs(*, max_operand: int, seed: int, num_eval: int, num_validation: int) -> dict[str, list[tuple[int, int]]]:
    """Every problem a+b (0 <= a, b <= max_operand) in exactly one split, by one seeded permutation:
    its first ``num_eval`` pairs are held out ("eval"), the next ``num_validation`` are the validation
    split, the rest are the only problems training (and the players' SFT) ever sees."""
    side = max_operand + 1
    if num_eval + num_validation >= side * side:
        raise ValueError(f"{num_eval} held-out + {num_validation} validation problems leave none of the {side * side} "
                         f"(max_operand={max_operand}) for training; lower data.synthetic.num_eval / num_validation")
    order = np.random.default_rng([seed, 7]).permutation(side * side)
    pairs = [(int(i) // side, int(i) % side) for i in order]
    return {"eval": pairs[:num_eval], "validation": pairs[num_eval:num_eval + num_validation],
            "train": pairs[num_eval + num_validation:]}


def split_of(synthetic) -> dict[str, list[tuple[int, int]]]:
    """``split_pairs`` of a ``data.synthetic`` config."""
    return split_pairs(max_operand=synthetic.max_operand, seed=synthetic.seed, num_eval=synthetic.num_eval,
                       num_validation=synthetic.num_validation)


def make_prompts(count: int, *, seed: int, max_operand: int = 99, split: str = "train",
                 pairs: list[tuple[int, int]] | None = None) -> list[Prompt]:
    """``count`` addition problems a+b= drawn (seeded, with replacement) from ``pairs`` (default: every
    a, b <= max_operand); ids are stable per (split, seed, i)."""
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 3])
    if pairs is None:
        drawn = rng.integers(0, max_operand + 1, size=(count, 2)).tolist()
    else:
        drawn = [pairs[i] for i in rng.integers(0, len(pairs), size=count)]
    return [_problem(f"{split}-{seed}-{i}", a, b) for i, (a, b) in enumerate(drawn)]


def split_prompts(split: str, pairs: list[tuple[int, int]], *, seed: int, count: int | None = None) -> list[Prompt]:
    """The problems of a held-out split, each once, in the split's order (the first ``count``)."""
    return [_problem(f"{split}-{seed}-{i}", a, b) for i, (a, b) in enumerate(pairs[:count])]


def _problem(prompt_id: str, a: int, b: int) -> Prompt:
    return Prompt(prompt_id=prompt_id, text=f"{a}+{b}=", reference=str(a + b))


def answer_error(answer: str, reference: str) -> float:
    """|answer - truth| as a number; inf when the answer is not an integer."""
    text = answer.strip()
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        return math.inf
    return float(abs(int(text) - int(reference)))


def absolute_score(answer: str, reference: str) -> float:
    """Point-wise score in [0, 10]: 10 when exact, one point less per unit of error, 0 if unparsable."""
    return max(0.0, 10.0 - answer_error(answer, reference))
