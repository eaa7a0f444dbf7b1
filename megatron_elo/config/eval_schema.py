"""``eval.benchmarks``: the offline evaluation harness's benchmarks (``megatron-elo eval --benchmark``).

Kept apart from ``schema.py`` for length only; ``schema.EvalConfig`` holds the list.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Literal

from megatron_elo.config.schema_base import opt

BENCHMARK_KINDS = ("pairwise_vs_reference", "single_grade", "pairwise_vs_baseline")


@dataclass(kw_only=True)
class BenchmarkConfig:
    """One benchmark of the harness (megatron_elo/harness): its questions, its protocol, its statistics."""

    name: str = opt(MISSING, "Unique name: `eval --benchmark NAME`, metrics bench/NAME/..., output folder eval/NAME.")
    kind: Literal["pairwise_vs_reference", "single_grade", "pairwise_vs_baseline"] = opt(
        MISSING, "pairwise_vs_reference (AlpacaEval-style: vs a reference answer, both orders, length-controlled win "
                 "rate); single_grade (MT-Bench-style: the judge grades each answer 1-10, two turns); "
                 "pairwise_vs_baseline (Arena-Hard-style: vs a baseline's answers, both orders, five-level verdicts, "
                 "Bradley-Terry scores with bootstrap intervals).")
    path: str = opt(MISSING, "Question file: AlpacaEval JSON (instruction, output, generator), MT-Bench question.jsonl "
                             "(question_id, category, turns, reference) or Arena-Hard questions (uid / question_id, "
                             "category, prompt or turns).")
    num_questions: int | None = opt(None, "Only the file's first N questions; None: all of them.")
    reference_player: str | None = opt(None, "pairwise_vs_reference: the opponent (a name in `opponents`) whose answers "
                                             "are the references; None: the file's `output` field.")
    baseline_player: str | None = opt(None, "pairwise_vs_baseline: the opponent (a name in `opponents`) whose answers "
                                            "are the baseline's; or set baseline_answers.")
    baseline_answers: str | None = opt(None, "pairwise_vs_baseline: the baseline's answers file (jsonl: question_id / "
                                             "uid and answer / output, or Arena-Hard's model_answer layout with choices).")
    baseline_name: str = opt("baseline", "pairwise_vs_baseline with baseline_answers: the baseline's name in the table.")
    template_dir: str | None = opt(None, "Directory of this benchmark's judge templates (pairwise.txt; single_grade: "
                                         "single.txt, single_reference.txt, multi_turn.txt, multi_turn_reference.txt); "
                                         "default configs/eval/<kind>.")
    reference_categories: list[str] = opt(factory=lambda: ["math", "reasoning", "coding"],
                                          help="single_grade: categories graded against the file's reference answer "
                                               "(when the question has one), as MT-Bench does.")
    max_turns: int = opt(2, "single_grade: turns answered and graded per question (MT-Bench: 2; 1: first turns only).")
    temperature: float = opt(0.0, "Candidates' (and generated references' / baselines') sampling temperature; 0: greedy.")
    max_new_tokens: int = opt(512, "Candidates' answer cap per turn, tokens.")
    seed: int = opt(0, "Sampling seed of the answers (temperature > 0) and of the bootstrap resamples.")
    length_control_l2: float = opt(0.2, "pairwise_vs_reference: L2 strength of the length-controlled GLM's fit.")
    bootstrap_rounds: int = opt(100, "Bootstrap resamples of every interval (LC win rate's standard error, "
                                     "Bradley-Terry quantiles).")
    quantiles: list[float] = opt(factory=lambda: [0.05, 0.95], help="pairwise_vs_baseline: the bootstrap interval's "
                                                                    "lower and upper quantiles.")
    strong_weight: int = opt(3, "pairwise_vs_baseline: games a strong verdict (A>>B) counts for (arena-hard-auto: 3).")
