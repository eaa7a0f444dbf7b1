"""The single-grade protocol (MT-Bench-style): the judge grades each answer 1-10, turn by turn.

    templates = grade_templates(bench.template_dir)
    result = judge_grades(bench, questions, answers, judge, templates)     # answers: {model: {qid: (turn 1, turn 2)}}

Turn 1 is graded alone (``single``), turn 2 with the whole conversation (``multi_turn``: the model's
own first answer is in it); a question of a ``reference_categories`` category with reference answers
is graded against them (``*_reference``). A reply without a clear 1-10 grade ("Rating: [[7]]") is
dropped and counted. Means per model, per turn and per category, with normal 95% intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from megatron_elo.config.eval_schema import BenchmarkConfig
from megatron_elo.harness.judging import TEMPLATES, CachedJudge, load_template
from megatron_elo.harness.pairwise import LOCAL_JUDGE
from megatron_elo.harness.questions import BenchQuestion
from megatron_elo.harness.results import BenchmarkResult, ModelRow, Number
from megatron_elo.harness.stats import mean_interval
from megatron_elo.judges.verdicts import parse_grade, visible_text

TEMPLATE_FIELDS = {
    "single": ("question", "answer"),
    "single_reference": ("question", "reference", "answer"),
    "multi_turn": ("question_1", "answer_1", "question_2", "answer_2"),
    "multi_turn_reference": ("question_1", "reference_1", "answer_1", "question_2", "reference_2", "answer_2"),
}


def grade_templates(template_dir: str | None) -> dict[str, str]:
    """The four single-grade templates (``template_dir`` or configs/eval/single_grade), fields checked."""
    root = Path(template_dir) if template_dir else TEMPLATES / "single_grade"
    return {name: load_template(root / f"{name}.txt", fields) for name, fields in TEMPLATE_FIELDS.items()}


def grade_prompt(judge: CachedJudge, templates: Mapping[str, str], question: BenchQuestion, turns: Sequence[str],
                 turn: int, *, reference_categories: Sequence[str]) -> str | None:
    """The judge's prompt grading the answer to ``turn`` (0 or 1) of ``question`` (``turns``: the answers)."""
    references = question.grading_references
    guided = question.category in reference_categories and len(references) > turn
    if turn == 0:
        fields = {"question": question.turns[0], "answer": turns[0]} | ({"reference": references[0]} if guided else {})
        return judge.fill(templates["single_reference" if guided else "single"], fields, answers=("answer",))
    fields = {"question_1": question.turns[0], "answer_1": turns[0], "question_2": question.turns[1], "answer_2": turns[1]}
    if guided:
        fields |= {"reference_1": references[0], "reference_2": references[1]}
    return judge.fill(templates["multi_turn_reference" if guided else "multi_turn"], fields, answers=("answer_1", "answer_2"))


def reply_grade(reply) -> float | None:
    """The grade of one reply (None: refused, still thinking, or no clear 1-10 grade)."""
    if reply is None or reply.error is not None:
        return None
    text, _ = visible_text(reply)
    return parse_grade(text) if text is not None else None


def _number(values: list[float]) -> Number:
    mean, half = mean_interval(values)
    return Number(value=mean, low=mean - half, high=mean + half)


def judge_grades(bench: BenchmarkConfig, questions: Sequence[BenchQuestion], answers: Mapping[str, Mapping[str, tuple[str, ...]]],
                 judge: CachedJudge, templates: Mapping[str, str], steps: Mapping[str, int | None] | None = None) -> BenchmarkResult:
    """MT-Bench-style grades of every model's answers."""
    items = [(m, q, t) for m in answers for q in questions for t in range(len(answers[m][q.question_id]))]
    prompts = [grade_prompt(judge, templates, q, answers[m][q.question_id], t, reference_categories=bench.reference_categories)
               for m, q, t in items]
    grades = [reply_grade(r) for r in judge.replies(prompts, description=f"{bench.name}: grading")]
    rows = []
    categories = sorted({q.category for q in questions})
    for model in answers:
        mine = [(q, t, g) for (m, q, t), g in zip(items, grades, strict=True) if m == model]
        valid = [(q, t, g) for q, t, g in mine if g is not None]
        numbers = {"grade": _number([g for _, _, g in valid])}
        for turn in sorted({t for _, t, _ in mine}):
            numbers[f"turn_{turn + 1}"] = _number([g for _, t, g in valid if t == turn])
        for category in categories:
            numbers[f"category/{category}"] = _number([g for q, _, g in valid if q.category == category])
        rows.append(ModelRow(model=model, numbers=numbers, step=(steps or {}).get(model),
                             counts={"graded": len(valid), "invalid": len(mine) - len(valid)}))
    return BenchmarkResult(name=bench.name, kind=bench.kind, headline="grade", rows=tuple(rows),
                           interval="95%: 1.96 standard errors of the mean",
                           notes=(LOCAL_JUDGE, "grades without a clear 1-10 rating are dropped and counted (invalid)"))
