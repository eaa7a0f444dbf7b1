"""An LLM judge that grades single answers 1-10 (the ``point`` recipe's absolute scoring), sharing its
engine with the pairwise LLM judge that evaluation uses.

    judge = GradingJudge(pairwise=build_llm_judge(cfg.judge, seed=0), template=load_grade_template(None))
    verdicts = judge.judge(games, rng)      # a game without an opponent: Verdict(score=grade); with one: pairwise

The template is the harness's single-grade one (configs/eval/single_grade/single.txt: {question},
{answer}); the reply must hold one clear 1-10 grade ("Rating: [[7]]"), else the game is invalid (the
sample gets no gradient) and counted. An answer that would not fit the judge's context is cut to
judge.max_answer_tokens (overlong=truncate) or the game dropped, as for pairwise games.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from megatron_elo.flow import Game, Verdict
from megatron_elo.judges.llm import LLMJudge
from megatron_elo.judges.verdicts import parse_grade, visible_text

DEFAULT_GRADE_TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "eval" / "single_grade" / "single.txt"


def load_grade_template(path: str | None) -> str:
    """The grading template (``judge.grade_template``, default the harness's single.txt), fields checked."""
    from megatron_elo.harness.judging import load_template

    return load_template(path or DEFAULT_GRADE_TEMPLATE, ("question", "answer"))


@dataclass
class GradeStats:
    """Counts of single-answer games graded."""

    graded: int = 0
    invalid: int = 0  # no clear 1-10 grade
    failed: int = 0  # refused by the engine, or did not fit


class GradingJudge:
    """Grades single answers with the pairwise judge's engine and tokenizer (module docstring)."""

    scores_single_answers = True

    def __init__(self, *, pairwise: LLMJudge, template: str):
        self.pairwise, self.template = pairwise, template
        self.stats = GradeStats()

    def _prompt(self, game: Game) -> str | None:
        judge = self.pairwise
        prompt = judge.render_user(self.template.format(question=game.prompt.text, answer=game.policy.text))
        if judge.fits(prompt):
            return prompt
        if judge.overlong == "truncate":
            prompt = judge.render_user(self.template.format(question=game.prompt.text, answer=judge.cut(game.policy.text)))
            if judge.fits(prompt):
                return prompt
        return None

    def grade(self, games: Sequence[Game]) -> list[Verdict]:
        """One score verdict per single-answer game (1-10), invalid where the reply has no clear grade."""
        prompts = [self._prompt(g) for g in games]
        sent = [p for p in prompts if p is not None]
        replies = iter(self.pairwise.backend.complete(sent, max_new_tokens=self.pairwise.max_new_tokens) if sent else [])
        verdicts = []
        for game, prompt in zip(games, prompts, strict=True):
            reply = next(replies) if prompt is not None else None
            if reply is None or reply.error is not None:
                self.stats.failed += 1
                reason = "answer does not fit the judge's context" if reply is None else f"judge request failed: {reply.error}"
                verdicts.append(Verdict(game_id=game.game_id, valid=False, detail=reason[:300]))
                continue
            text, recorded = visible_text(reply)
            grade = parse_grade(text) if text is not None else None
            if grade is None:
                self.stats.invalid += 1
                verdicts.append(Verdict(game_id=game.game_id, valid=False, detail=f"no clear 1-10 grade: {recorded[:300]!r}"))
                continue
            self.stats.graded += 1
            verdicts.append(Verdict(game_id=game.game_id, score=grade, detail=recorded[-200:]))
        return verdicts

    def judge(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """Single-answer games graded, pairwise games (evaluation's) by the pairwise judge, in game order."""
        single = [g for g in games if g.opponent is None]
        pairs = [g for g in games if g.opponent is not None]
        decided = {v.game_id: v for v in (self.grade(single) if single else [])}
        decided |= {v.game_id: v for v in (self.pairwise.judge_pairs(pairs) if pairs else [])}
        return [decided[g.game_id] for g in games]

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator | None = None) -> list[Verdict]:
        """All batches at once, in game-id order."""
        return self.judge(sorted((g for batch in batches for g in batch), key=lambda g: g.game_id), rng)

    def metrics(self) -> dict[str, float]:
        """judge/grade_invalid_rate, judge/grade_failed_rate, and the pairwise judge's rates."""
        total = max(self.stats.graded + self.stats.invalid + self.stats.failed, 1)
        return {"judge/grade_invalid_rate": self.stats.invalid / total,
                "judge/grade_failed_rate": self.stats.failed / total} | self.pairwise.metrics()

    def close(self) -> None:
        """Stop the shared engine."""
        self.pairwise.close()

    def state_dict(self) -> dict:
        """Its counts and the pairwise judge's."""
        return {"grades": asdict(self.stats), "pairwise": self.pairwise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
        self.stats = GradeStats(**state["grades"])
        self.pairwise.load_state_dict(state["pairwise"])
