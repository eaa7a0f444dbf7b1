"""Training's periodic evaluation on a benchmark of the harness (``eval.benchmark``) instead of games.

    evaluator = BenchmarkEvaluator.from_context(ctx, sampler)    # build_evaluator picks it when eval.benchmark is set
    result = evaluator.evaluate(step)                            # EvalResult on every rank (collective)

Every rank answers the benchmark's questions on the policy's colocated engine (turn 2 after turn 1);
the driver judges them with the harness's protocol (the ``judge`` section's LLM, its engine shared
with the training judge when that is an LLM judge; judgments cached under <run>/eval/judgments.sqlite),
writes the report to <run>/eval/<benchmark>/step_<N>/ and every rank gets the headline: the LC win
rate, the Arena-Hard score, or the mean grade / 10, as ``eval/win_rate`` (its interval's half-width
as ``eval/win_rate_ci95``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_elo.config.eval_schema import BenchmarkConfig
from megatron_elo.data.source import fit_prompt
from megatron_elo.evaluation.evaluator import EvalResult
from megatron_elo.flow import POLICY, Prompt
from megatron_elo.harness.answers import answer_settings, answer_turns
from megatron_elo.harness.questions import read_questions
from megatron_elo.parallel.world import World
from megatron_elo.players.sampler import PolicySampler
from megatron_elo.utils.seeds import stable_seed

if TYPE_CHECKING:
    from megatron_elo.harness.judging import CachedJudge
    from megatron_elo.runner.context import RunContext


class BenchmarkEvaluator:
    """A benchmark as the run's evaluation (see the module docstring)."""

    def __init__(self, *, bench: BenchmarkConfig, sampler: PolicySampler, world: World, open_judge, other_side,
                 run_dir: Path, max_prompt_tokens: int):
        """open_judge() -> CachedJudge and other_side(questions) -> (answers, name): the driver's, called on first need."""
        self.bench, self.sampler, self.world, self.run_dir = bench, sampler, world, run_dir
        self.questions = tuple(read_questions(bench.path, limit=bench.num_questions))
        self.max_prompt_tokens = max_prompt_tokens
        self._open_judge, self._other_side = open_judge, other_side
        self.judge = self.other = None

    @classmethod
    def from_context(cls, ctx: RunContext, sampler: PolicySampler) -> BenchmarkEvaluator:
        """The run's ``eval.benchmark``, judged by the ``judge`` section behind the run's judgment store."""
        from megatron_elo.harness.judging import JudgmentStore
        from megatron_elo.harness.run import cached_judge, open_judge, other_side
        from megatron_elo.players.answer_store import AnswerStore

        cfg = ctx.cfg
        bench = next(b for b in cfg.eval.benchmarks if b.name == cfg.eval.benchmark)
        store = JudgmentStore(ctx.run_dir / "eval" / "judgments.sqlite")

        def judge() -> CachedJudge:
            training = ctx.judge()
            pairwise = getattr(training, "pairwise", training)  # the grader's pairwise judge shares its engine
            if getattr(pairwise, "backend", None) is not None and cfg.judge.kind == "llm":
                return cached_judge(cfg, pairwise.backend, pairwise.tokenizer, store)
            return open_judge(cfg, store, world_size=ctx.world.size)  # the training judge is a checker or a reward model: the judge section's LLM

        return cls(bench=bench, sampler=sampler, world=ctx.world, open_judge=judge, run_dir=ctx.run_dir,
                   other_side=lambda questions: other_side(cfg, bench, questions, AnswerStore(ctx.run_dir / "eval" / "answers.sqlite"),
                                                           world_size=ctx.world.size),
                   max_prompt_tokens=cfg.rollout.max_prompt_tokens)

    def _answer(self, prompts: list[Prompt]) -> list[str]:
        """The policy's answers on its engine (every rank), prompts cut to rollout.max_prompt_tokens (their end kept)."""
        tokenizer = self.sampler.tokenizer
        settings = answer_settings(temperature=self.bench.temperature, max_new_tokens=self.bench.max_new_tokens,
                                   eos_id=tokenizer.eos_id)
        settings = replace(settings, seed=stable_seed(self.bench.seed, "bench", self.bench.name))
        ids = [fit_prompt(p, tuple(tokenizer.encode_prompt(p)), max_tokens=self.max_prompt_tokens, overlong="truncate")
               for p in prompts]
        return [group[0].text for group in self.sampler.respond(prompts, ids, settings, player=POLICY)]

    def evaluate(self, step: int) -> EvalResult:
        """The policy's answers on every rank, the driver's judging and report, the headline on every rank."""
        from megatron_elo.harness.run import turns_wanted

        answers = answer_turns(self._answer, self.questions, max_turns=turns_wanted(self.bench))
        return self.world.on_driver(lambda: self._judge(step, answers), waiting_for=f"the driver's {self.bench.name} judging at step {step}")

    def _judge(self, step: int, answers: dict[str, tuple[str, ...]]) -> EvalResult:
        from megatron_elo.harness.report import write_report
        from megatron_elo.harness.run import Generated, judge_benchmark

        if self.judge is None:
            self.judge = self._open_judge()
            self.other = self._other_side(self.questions)
        generated = Generated(questions=self.questions, answers={POLICY: answers}, other=self.other[0], other_name=self.other[1])
        result = judge_benchmark(self.bench, generated, self.judge, {POLICY: step})
        write_report(result, self.run_dir / "eval" / self.bench.name / f"step_{step:08d}")
        row = next(r for r in result.rows if r.model == POLICY)
        headline = row.numbers[result.headline]
        scale = 10.0 if self.bench.kind == "single_grade" else 1.0
        return EvalResult(step=step, win_rate=headline.value / scale, ci95=(headline.high - headline.low) / 2 / scale,
                          per_opponent={}, exact=float("nan"))
