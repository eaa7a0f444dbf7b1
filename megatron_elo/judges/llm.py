"""Pairwise LLM-as-judge: a template, robust verdict parsing, log-prob verdicts, position swap.

    judge = LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer,
                     template=load_template(None), swap_positions=True, logprob_verdicts=False)
    verdicts = judge.judge_pairs(games, rng)          # one Verdict per Game; judge.stats counts the rest

Text verdicts: the judge writes reasoning and then [[A]], [[B]] or [[C]] (tie). ``parse_verdict``
also accepts "Verdict: A", "Winner: Answer B", "tie", a bare letter; anything else, or two
different verdicts in one reply, is invalid: the game is dropped and counted, never silently a win.
Log-prob verdicts: the assistant turn is prefilled with "[[" and the verdict is the most likely of
the letters A / B / C (no parsing, no invalid verdicts). Position swap: each game is judged with the
policy's answer first and again second; a verdict that changes with the order becomes a tie; an
invalid verdict in either order drops the game. A backend failure (engine error, server timeout)
drops the whole batch's games with the reason in ``Verdict.detail``; the run goes on.
On a served engine ``judge_stream`` judges each batch (one opponent's games) as soon as it arrives,
several at once; the verdicts are those of one big batch (greedy decoding, no randomness).
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from megatron_elo.flow import Game, Verdict
from megatron_elo.judges.base import judge_in_one_batch

Letter = Literal["A", "B", "tie"]
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "judge_pairwise.txt"
TEMPLATE_FIELDS = frozenset({"question", "answer_a", "answer_b"})
LOGPROB_PREFILL = "[["
LOGPROB_CHOICES = {"A": "A", "B": "B", "C": "tie"}

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(r"\b(?:final\s+)?(?:verdict|winner|answer|choice|decision|better(?:\s+answer)?)\s*(?:is)?\s*[:=\-]?\s*"
                       r"(?:answer|assistant|response|output)?\s*\(?\b(A|B|C|tie)\b\)?", re.IGNORECASE)
_TIE_WORDS = re.compile(r"\b(tie|draw|equally good|equally bad)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Letter | None:
    """The verdict in a judge's reply, or None when there is none or it is ambiguous.

    Bracketed [[A]] / [[B]] / [[C]] (C = tie) win over labelled forms ("Verdict: B"), which win over
    a bare reply ("A", "tie."). Two different verdicts of the same kind: None.
    """
    for pattern in (_BRACKETED, _LABELLED):
        found = {_letter(m) for m in pattern.findall(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    bare = text.strip().strip(string.punctuation + " ").strip()
    if bare.upper() in ("A", "B"):
        return bare.upper()
    if bare.lower() in ("c", "tie", "draw") or (_TIE_WORDS.search(text) and not re.search(r"\b[AB]\b", text)):
        return "tie"
    return None


def _letter(raw: str) -> Letter:
    raw = raw.upper()
    return "tie" if raw in ("C", "TIE") else raw


def load_template(path: str | None) -> str:
    """The pairwise template text (``judge.template``, default configs/judge_pairwise.txt), checked to
    use exactly the fields {question}, {answer_a} and {answer_b}."""
    source = Path(path) if path else DEFAULT_TEMPLATE
    if not source.is_file():
        raise FileNotFoundError(f"judge.template: no file at {source}; point it at a text file with "
                                f"{{question}}, {{answer_a}} and {{answer_b}}, or leave it unset for the built-in one")
    text = source.read_text()
    used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    if used != TEMPLATE_FIELDS:
        raise ValueError(f"judge.template {source}: uses fields {sorted(used)}; it must use exactly "
                         f"{sorted(TEMPLATE_FIELDS)} (write literal braces as {{{{ and }}}})")
    return text


class JudgeBackend(Protocol):
    """What an LLM judge needs from an engine. Prompts are fully rendered text (chat template applied)."""

    concurrent: bool  # calls may overlap (a served engine)

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy completion of each prompt."""
        ...

    def choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[float]]:
        """log p(choice | prompt) (nats, summed over the choice's tokens) for every prompt and choice."""
        ...


@dataclass
class JudgeStats:
    """Counts over the judge's lifetime (``LLMJudge.stats``), for metrics."""

    games: int = 0
    invalid: int = 0  # unparsable or ambiguous verdict in some order
    failed: int = 0  # the backend raised: game dropped
    order_flips: int = 0  # swap on: the verdict changed with the order (became a tie)
    examples: list[str] = field(default_factory=list)  # a few invalid replies, for the log

    def as_metrics(self) -> dict[str, float]:
        """Rates for MLflow (per game judged)."""
        games = max(self.games, 1)
        return {"judge/invalid_rate": self.invalid / games, "judge/failed_rate": self.failed / games,
                "judge/order_flip_rate": self.order_flips / games}


class LLMJudge:
    """Decides pairwise games with an LLM (the ``Judge`` protocol; see the module docstring)."""

    scores_single_answers = False

    def __init__(self, *, backend: JudgeBackend, tokenizer, template: str, swap_positions: bool = True,
                 logprob_verdicts: bool = False, max_new_tokens: int = 256):
        self.backend = backend
        self.tokenizer = tokenizer
        self.template = template
        self.swap_positions = swap_positions
        self.logprob_verdicts = logprob_verdicts
        self.max_new_tokens = max_new_tokens
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()  # batches of one stream are combined from several threads

    def judge(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """One verdict per game; a game without an opponent is invalid (this judge compares two answers)."""
        return self.judge_pairs(games, rng)

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator | None = None) -> list[Verdict]:
        """Each batch sent as soon as it arrives (a served backend: several in flight), else all in one."""
        if not getattr(self.backend, "concurrent", False):
            return judge_in_one_batch(self, batches, rng)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="judge") as pool:
            futures = [pool.submit(self.judge_pairs, list(batch)) for batch in batches]
            verdicts = [v for future in futures for v in future.result()]
        return sorted(verdicts, key=lambda v: v.game_id)

    def metrics(self) -> dict[str, float]:
        """Invalid, failed and order-flip rates over every game judged so far."""
        return self.stats.as_metrics()

    def close(self) -> None:
        """Stop the judge's engine (its server, when it started one)."""
        self.backend.close()

    def state_dict(self) -> dict:
        """Its statistics (so a resumed run's rates continue, not restart)."""
        return asdict(self.stats)

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s statistics."""
        self.stats = JudgeStats(**state)

    def render(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's prompt text: the filled template as a user turn, then the assistant prefix."""
        user = self.template.format(question=question, answer_a=answer_a, answer_b=answer_b)
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                    add_generation_prompt=True)
        return prompt + (LOGPROB_PREFILL if self.logprob_verdicts else "")

    def _letters(self, prompts: list[str]) -> list[tuple[Letter | None, str]]:
        """(verdict letter or None, raw evidence) per prompt."""
        if self.logprob_verdicts:
            scores = self.backend.choice_logprobs(prompts, list(LOGPROB_CHOICES))
            out = []
            for row in scores:
                best = int(np.argmax(row))
                out.append((LOGPROB_CHOICES[list(LOGPROB_CHOICES)[best]],
                            "logp " + " ".join(f"{c}={v:.3f}" for c, v in zip(LOGPROB_CHOICES, row, strict=True))))
            return out
        return [(parse_verdict(text), text) for text in self.backend.complete(prompts, max_new_tokens=self.max_new_tokens)]

    def judge_pairs(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """One verdict per pairwise game (policy vs opponent); ``rng`` is unused (greedy judge)."""
        pairwise = [g for g in games if g.opponent is not None]
        prompts = [self.render(g.prompt.text, g.policy.text, g.opponent.text) for g in pairwise]
        if self.swap_positions:
            prompts += [self.render(g.prompt.text, g.opponent.text, g.policy.text) for g in pairwise]
        try:
            letters = self._letters(prompts) if prompts else []
        except Exception as err:  # a judge failure never crashes a run: drop these games, say why
            with self._stats_lock:
                self.stats.games += len(games)
                self.stats.failed += len(pairwise)
            reason = f"judge failed: {type(err).__name__}: {err}"[:300]
            return [Verdict(game_id=g.game_id, valid=False, detail=reason if g.opponent is not None else "not a pairwise game")
                    for g in games]
        decided = {}
        with self._stats_lock:
            self.stats.games += len(games)
            for index, game in enumerate(pairwise):
                first = letters[index]
                second = letters[index + len(pairwise)] if self.swap_positions else None
                decided[game.game_id] = self._combine(game, first, second)
        return [decided.get(g.game_id) or Verdict(game_id=g.game_id, valid=False, detail="not a pairwise game") for g in games]

    def _combine(self, game: Game, first: tuple[Letter | None, str], second: tuple[Letter | None, str] | None) -> Verdict:
        """Policy shown as A in ``first`` and as B in ``second``; map both to a winner."""
        as_a = {"A": "policy", "B": "opponent", "tie": "tie"}
        as_b = {"A": "opponent", "B": "policy", "tie": "tie"}
        replies = [first] + ([second] if second is not None else [])
        if any(letter is None for letter, _ in replies):
            self.stats.invalid += 1
            bad = next(text for letter, text in replies if letter is None)
            if len(self.stats.examples) < 5:
                self.stats.examples.append(bad[:200])
            return Verdict(game_id=game.game_id, valid=False, detail=f"invalid judge reply: {bad[:300]!r}")
        winner = as_a[first[0]]
        if second is not None and as_b[second[0]] != winner:
            self.stats.order_flips += 1
            winner = "tie"
        return Verdict(game_id=game.game_id, winner=winner, detail=" | ".join(text[-200:] for _, text in replies))


class EngineJudgeBackend:
    """The judge on a vLLM engine driven with token ids (``RolloutEngine`` in this process or a
    ``ServedRolloutEngine``), prompts encoded with the judge's tokenizer."""

    def __init__(self, engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer
        self.concurrent = getattr(engine, "served", False)

    def close(self) -> None:
        """Stop the judge's engine (its server, when it runs as one)."""
        self.engine.close()

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)  # the chat template already has them

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy completions, decoded without special tokens."""
        from megatron_elo.rollout.engine import SamplingSettings

        settings = SamplingSettings(n=1, max_tokens=max_new_tokens, temperature=0.0,
                                    stop_token_ids=(self.tokenizer.eos_token_id,))
        samples = self.engine.generate([self._encode(p) for p in prompts], settings)
        return [self.tokenizer.decode(list(s[0].token_ids), skip_special_tokens=True) for s in samples]

    def choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[float]]:
        """Scores prompt + choice for every pair in one engine call; sums the choice tokens' log-probs."""
        encoded = [self._encode(p) for p in prompts]
        choice_ids = [self._encode(c) for c in choices]
        sequences = [prompt + ids for prompt in encoded for ids in choice_ids]
        scored = self.engine.score(sequences)
        out, cursor = [], 0
        for prompt in encoded:
            row = []
            for ids in choice_ids:
                row.append(float(sum(scored[cursor][len(prompt):len(prompt) + len(ids)])))
                cursor += 1
            out.append(row)
        return out


def build_llm_judge(config, *, seed: int, cluster=None, world_size: int = 1, log_dir: str | Path | None = None) -> LLMJudge:
    """The judge of ``config`` (a ``JudgeConfig`` with kind=llm) on its own vLLM engine (in this
    process, or a server: ``judge.engine.launch``), its prompts rendered with the judge model's own
    tokenizer and chat template. cluster: where dedicated judge servers are (default: one CPU node)."""
    import transformers

    from megatron_elo.config.schema import ClusterConfig
    from megatron_elo.rollout.launch import open_engine

    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model.path)
    engine = open_engine(config.model, config.engine, cluster=cluster or ClusterConfig(device="cpu"), seed=seed,
                         world_size=world_size, log_path=Path(log_dir) / "judge.log" if log_dir else None)
    return LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer, template=load_template(config.template),
                    swap_positions=config.swap_positions, logprob_verdicts=config.logprob_verdicts,
                    max_new_tokens=config.max_new_tokens)
