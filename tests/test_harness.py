"""The offline evaluation harness: benchmark files, the length-controlled win rate, Bradley-Terry
scores and bootstrap intervals against known answers, the three protocols with a scripted judge
(both orders, five-level verdicts, two-turn grading), invalid replies counted, and a killed
evaluation resumed without re-judging."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from megatron_elo.config.eval_schema import BenchmarkConfig
from megatron_elo.harness.answers import answer_turns
from megatron_elo.harness.grading import grade_templates, judge_grades
from megatron_elo.harness.judging import TEMPLATES, CachedJudge, JudgmentStore, load_template
from megatron_elo.harness.pairwise import PAIR_FIELDS, judge_vs_baseline, judge_vs_reference
from megatron_elo.harness.questions import BenchmarkFileError, BenchQuestion, read_answers, read_questions
from megatron_elo.harness.report import format_table, write_report
from megatron_elo.harness.run import Generated, judge_benchmark
from megatron_elo.harness.stats import bootstrap, bradley_terry, expected_score, length_controlled_win_rate
from megatron_elo.judges.verdicts import JudgeReply, parse_grade, parse_scale_verdict

DATA = Path(__file__).parent / "data" / "bench"
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import transformers

    from megatron_elo.models.tiny import make_tiny_tokenizer

    return transformers.AutoTokenizer.from_pretrained(str(make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


class Scripted:
    """A judge backend answering each prompt with ``reply(prompt)``; keeps every prompt; may fail after N calls."""

    concurrent = False

    def __init__(self, reply, *, fail_after_calls: int | None = None):
        self.reply, self.fail_after_calls, self.prompts, self.calls = reply, fail_after_calls, [], 0

    def complete(self, prompts, *, max_new_tokens):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.prompts += list(prompts)
        return [JudgeReply(self.reply(p)) for p in prompts]

    def close(self):
        pass


def _judge(tokenizer, backend, tmp_path, **kwargs) -> CachedJudge:
    return CachedJudge(backend, tokenizer, model_id="scripted-judge", store=JudgmentStore(tmp_path / "judgments.sqlite"),
                       **kwargs)


def _answers(prompt: str) -> tuple[str, str]:
    a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", prompt, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\nExplain", prompt, re.S).group(1)
    return a, b


# ---------------------------------------------------------------- files and parsing


def test_the_three_file_layouts_are_read():
    alpaca = read_questions(DATA / "alpaca_eval.json")
    assert [q.turns for q in alpaca][1] == ("What is 2 + 3?",) and alpaca[1].reference_answer == "2 + 3 = 5."
    assert alpaca[0].category == "helpful_base" and alpaca[0].reference_generator == "reference_model"
    assert len({q.question_id for q in alpaca}) == 3  # ids from the instruction text
    mt = read_questions(DATA / "mt_bench_question.jsonl")
    assert mt[1].question_id == "111" and mt[1].grading_references == ("144", "169") and len(mt[0].turns) == 2
    arena = read_questions(DATA / "arena_hard_question.jsonl", limit=2)
    assert [q.question_id for q in arena] == ["a1", "a2"] and arena[1].turns[0].startswith("Write a Python")
    assert read_answers(DATA / "arena_hard_baseline.jsonl") == {"a1": "Recursion is a function calling itself.", "a2": "s[::-1]"}


@pytest.mark.parametrize("lines, message", [
    (['{"question_id": 1, "turns": ["a"]}', '{"question_id": 2, "category": "x"}'], r":2: no question"),
    (['{"question_id": 1, "turns": []}'], r":1: field 'turns' must be a non-empty list"),
    (['{"question_id": 1, "turns": ["a", 3]}'], r":1: field 'turns.1' must be a non-empty string"),
    (['{"question_id": 1, "turns": ["a"]}', '{"question_id": 1, "turns": ["b"]}'], r":2: question id '1' is also on line 1"),
    (['{"instruction": "a"}', '{"instruction": "b"'], r":2: not valid JSON"),
    (['{"instruction": "a", "output": 3}'], r":1: field 'output' \(the reference answer\) must be a string"),
])
def test_a_bad_row_names_its_line_and_field(tmp_path, lines, message):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFileError, match=re.escape(str(path)) + message):
        read_questions(path)


@pytest.mark.parametrize("text, grade", [("Rating: [[7]]", 7.0), ("[[8.5]]", 8.5), ("Rating: [4]", 4.0),
                                         ("[[11]]", None), ("[[3]] no, [[5]]", None), ("no grade", None), ("[[0]]", None)])
def test_grades(text, grade):
    assert parse_grade(text) == grade


@pytest.mark.parametrize("text, verdict", [("... [[A>>B]]", "A>>B"), ("[[B>A]]", "B>A"), ("[[a=b]]", "A=B"),
                                           ("[[A<B]]", "B>A"), ("[[B<<A]]", "A>>B"), ("[[A>B]] then [[B>A]]", None),
                                           ("[[A>A]]", None), ("[[A]]", None), ("A is better", None)])
def test_five_level_verdicts(text, verdict):
    assert parse_scale_verdict(text) == verdict


# ---------------------------------------------------------------- statistics against known answers


def _length_biased(rng, quality: float, questions: int = 600):
    delta = rng.normal(150.0, 200.0, size=questions).round()  # the candidate is longer on ~77% of the questions
    p_true = 1 / (1 + np.exp(-(quality + 2.5 * np.tanh(delta / delta.std(ddof=1)))))
    return (rng.random(questions) < p_true).astype(float), delta


def test_the_length_controlled_win_rate_removes_a_pure_length_preference():
    """A judge that prefers longer answers and nothing else: the plain win rate is far from 0.5, the LC
    win rate near it; a candidate that is also better (logit +1) keeps its advantage (sigmoid(1) = 0.73)."""
    rng = np.random.default_rng(0)
    pref, delta = _length_biased(rng, quality=0.0)
    assert pref.mean() > 0.68
    assert abs(length_controlled_win_rate(pref, delta).win_rate - 0.5) < 0.05
    pref, delta = _length_biased(rng, quality=1.0)
    lc = length_controlled_win_rate(pref, delta)
    assert pref.mean() > 0.82 and abs(lc.win_rate - 1 / (1 + math.exp(-1))) < 0.06 and lc.coef_length > 1.5
    # without a length effect the LC win rate is the plain one
    flat = (rng.random(600) < 0.3).astype(float)
    assert abs(length_controlled_win_rate(flat, rng.normal(0, 100, 600)).win_rate - flat.mean()) < 0.02


def test_bradley_terry_matches_the_closed_form_and_known_strengths():
    # two players: the MLE win probability is the (weighted) win share
    outcome = np.array([1.0] * 7 + [0.0] * 2 + [0.5])
    ratings = bradley_terry(np.zeros(10, int), np.ones(10, int), outcome, n_models=2, anchor=1, l2=0.0)
    assert ratings[1] == 1000 and ratings[0] == pytest.approx(1000 + 400 * math.log10(7.5 / 2.5), abs=1e-6)
    # three models against the anchor, many games: strengths recovered
    rng = np.random.default_rng(1)
    truth = np.array([1000.0, 1100.0, 880.0])
    a, b, out = [], [], []
    for model in (1, 2):
        wins = rng.random(4000) < expected_score(truth[model], truth[0])
        a += [model] * 4000
        b += [0] * 4000
        out += list(wins.astype(float))
    fitted = bradley_terry(np.array(a), np.array(b), np.array(out), n_models=3, anchor=0)
    assert np.abs(fitted - truth).max() < 15


def test_bootstrap_intervals_are_reproducible_and_cover_the_truth_at_the_nominal_rate():
    p_true, games, covered = 0.7, 150, 0
    rng = np.random.default_rng(2)
    for trial in range(200):
        outcome = (rng.random(games) < p_true).astype(float)

        def score(rows, outcome=outcome):
            return expected_score(bradley_terry(np.ones(games, int)[rows], np.zeros(games, int)[rows], outcome[rows],
                                                n_models=2, anchor=0)[1], 1000.0)

        low, high = np.quantile(bootstrap(score, games, rounds=100, seed=trial), [0.05, 0.95])
        covered += low <= p_true <= high
        if trial == 0:
            again = np.quantile(bootstrap(score, games, rounds=100, seed=0), [0.05, 0.95])
            assert (low, high) == tuple(again)
    assert 0.82 <= covered / 200 <= 0.96  # nominal 0.90


# ---------------------------------------------------------------- protocols with a scripted judge


def _bench(kind: str, **kwargs) -> BenchmarkConfig:
    return BenchmarkConfig(name=kind, kind=kind, path="unused", bootstrap_rounds=20, **kwargs)


def _questions(count: int) -> list[BenchQuestion]:
    return [BenchQuestion(question_id=f"q{i}", category="c", turns=(f"question {i}",), reference_answer=f"ref {i}")
            for i in range(count)]


def test_vs_reference_judges_both_orders_and_counts_invalid_replies(tokenizer, tmp_path):
    """The judge prefers an answer with GOOD in it and cannot decide on q3; a position-biased judge
    (always [[A]]) gives every question a tie."""
    def reply(prompt):
        a, b = _answers(prompt)
        if "q3" in a + b:
            return "I cannot decide"
        return "[[A]]" if "GOOD" in a else "[[B]]" if "GOOD" in b else "[[C]]"

    questions = _questions(6)
    references = {q.question_id: f"{q.question_id} ref" for q in questions}
    answers = {"m": {q.question_id: f"{q.question_id} {'GOOD' if i % 2 else 'meh'} answer" for i, q in enumerate(questions)}}
    backend = Scripted(reply)
    judge = _judge(tokenizer, backend, tmp_path)
    template = load_template(TEMPLATES / "pairwise_vs_reference" / "pairwise.txt", PAIR_FIELDS)
    result = judge_vs_reference(_bench("pairwise_vs_reference"), questions, answers, references, judge, template)
    row = result.rows[0]
    # q1, q5 GOOD (wins); q0, q2, q4 ties; q3 invalid in both orders: dropped, counted
    assert row.counts == {"questions": 5, "invalid": 1, "wins": 2, "ties": 3}
    assert row.numbers["win_rate"].value == pytest.approx((2 + 1.5) / 5)
    assert len(backend.prompts) == 12 and sum("q0 meh answer\n\n[Answer B]" in p for p in backend.prompts) == 1
    assert len(result.points) == 5 and "local model" in format_table(result)

    biased = judge_vs_reference(_bench("pairwise_vs_reference"), questions, answers, references,
                                _judge(tokenizer, Scripted(lambda p: "[[A]]"), tmp_path / "biased"), template)
    assert biased.rows[0].numbers["win_rate"].value == 0.5 and biased.rows[0].counts["ties"] == 6


def test_vs_baseline_counts_strong_verdicts_three_times(tokenizer, tmp_path):
    """Model 'strong' is much better in one order and tied in the other: per question 3 wins and a tie,
    so its BT win probability against the baseline is 3.5 / 4; 'weak' loses slightly in both orders."""
    def reply(prompt):
        a, b = _answers_arena(prompt)
        if "strong" in a + b:
            return "[[B>>A]]" if "strong" in b else "[[A=B]]"
        return "[[A>B]]" if "baseline" in a else "[[B>A]]"

    questions = _questions(4)
    baseline = {q.question_id: f"baseline {q.question_id}" for q in questions}
    answers = {name: {q.question_id: f"{name} {q.question_id}" for q in questions} for name in ("strong", "weak")}
    template = load_template(TEMPLATES / "pairwise_vs_baseline" / "pairwise.txt", PAIR_FIELDS)
    result = judge_vs_baseline(_bench("pairwise_vs_baseline"), questions, answers, baseline,
                               _judge(tokenizer, Scripted(reply), tmp_path), template, baseline_name="base")
    rows = {r.model: r for r in result.rows}
    assert [r.model for r in result.rows] == ["strong", "base", "weak"]  # leaderboard order
    assert rows["strong"].numbers["score"].value == pytest.approx(3.5 / 4, abs=2e-3)
    assert rows["strong"].counts == {"games": 16, "invalid": 0} and rows["base"].numbers["score"].value == 0.5
    assert rows["weak"].numbers["score"].value < 0.01
    low, high = rows["strong"].numbers["score"].low, rows["strong"].numbers["score"].high
    assert low <= rows["strong"].numbers["score"].value <= high


def _answers_arena(prompt: str) -> tuple[str, str]:
    a = re.search(r"Assistant A's Answer\|>\n(.*?)\n<\|The End", prompt, re.S).group(1)
    b = re.search(r"Assistant B's Answer\|>\n(.*?)\n<\|The End", prompt, re.S).group(1)
    return a, b


def test_single_grade_two_turns_see_the_first_answer_and_references_guide_math(tokenizer, tmp_path):
    questions = read_questions(DATA / "mt_bench_question.jsonl")
    seen = []

    def answerer(prompts):
        seen.extend(prompts)
        return [f"answer to {p.prompt_id}" for p in prompts]

    turns = answer_turns(answerer, questions, max_turns=2)
    assert turns["111"] == ("answer to 111/turn1", "answer to 111/turn2") and len(turns["131"]) == 1
    second = next(p for p in seen if p.prompt_id == "81/turn2")
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1].content == "answer to 81/turn1"

    def grade(prompt):
        if "131" in prompt:
            return "This answer is fine."  # no rating: invalid, counted
        if "Reference" in prompt:
            return "Rating: [[9]]" if "144" in prompt else "Rating: [[1]]"
        return "Rating: [[6]]" if "Assistant A's Conversation" not in prompt else "Rating: [[4]]"

    backend = Scripted(grade)
    result = judge_grades(_bench("single_grade"), questions, {"m": turns}, _judge(tokenizer, backend, tmp_path),
                          grade_templates(None))
    row = result.rows[0]
    # writing: turn 1 graded 6, turn 2 (conversation) 4; math: reference-guided 9 and 9
    assert row.counts == {"graded": 4, "invalid": 1}
    assert row.numbers["turn_1"].value == pytest.approx(7.5) and row.numbers["turn_2"].value == pytest.approx(6.5)
    assert row.numbers["category/math"].value == 9 and row.numbers["category/writing"].value == 5
    assert math.isnan(row.numbers["category/extraction"].value)
    turn_two = [p for p in backend.prompts if "answer to 81/turn2" in p][0]
    assert "answer to 81/turn1" in turn_two  # the judge sees the model's own first answer


def test_a_killed_evaluation_resumes_without_rejudging(tokenizer, tmp_path):
    """The judge is killed after its first chunk; the rerun sends only what the store lacks and its
    report equals an uninterrupted evaluation's."""
    questions = _questions(5)
    generated = Generated(questions=tuple(questions), answers={"m": {q.question_id: (f"{q.question_id} answer GOOD",)
                                                                     for q in questions}},
                          other={q.question_id: q.reference_answer for q in questions})

    def reply(prompt):
        a, _ = _answers(prompt)
        return "[[A]]" if "GOOD" in a else "[[B]]"

    bench = _bench("pairwise_vs_reference")
    killed = _judge(tokenizer, Scripted(reply, fail_after_calls=1), tmp_path / "run", chunk=4)
    with pytest.raises(KeyboardInterrupt):
        judge_benchmark(bench, generated, killed)
    rerun_backend = Scripted(reply)
    resumed = judge_benchmark(bench, generated, _judge(tokenizer, rerun_backend, tmp_path / "run", chunk=4))
    assert len(rerun_backend.prompts) == 10 - 4
    fresh = judge_benchmark(bench, generated, _judge(tokenizer, Scripted(reply), tmp_path / "fresh", chunk=4))
    assert resumed == fresh and resumed.rows[0].numbers["win_rate"].value == 1.0


def test_reports_are_written_with_intervals_and_plots(tokenizer, tmp_path):
    questions = _questions(8)
    answers = {m: {q.question_id: q.question_id + " x" * (i + 1) * (k + 1) for k, q in enumerate(questions)}
               for i, m in enumerate(("a", "b"))}
    judge = _judge(tokenizer, Scripted(lambda p: "[[A]]" if len(_answers(p)[0]) > len(_answers(p)[1]) else "[[B]]"), tmp_path)
    template = load_template(TEMPLATES / "pairwise_vs_reference" / "pairwise.txt", PAIR_FIELDS)
    result = judge_vs_reference(_bench("pairwise_vs_reference"), questions, answers,
                                {q.question_id: q.reference_answer for q in questions}, judge, template)
    paths = write_report(result, tmp_path / "out")
    assert {p.name for p in paths} == {"report.md", "report.json", "scores.png", "length.png"}
    table = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| a \|  \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", table)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]["counts"]["questions"] == 8
    assert set(result.metrics()) >= {"bench/pairwise_vs_reference/a/lc_win_rate", "bench/pairwise_vs_reference/a/lc_win_rate_low"}


def test_templates_are_checked_and_overlong_prompts_cut_or_dropped(tokenizer, tmp_path):
    bad = tmp_path / "pairwise.txt"
    bad.write_text("{question} {answer_a}")
    with pytest.raises(ValueError, match="must use exactly"):
        load_template(bad, PAIR_FIELDS)
    template = load_template(TEMPLATES / "pairwise_vs_reference" / "pairwise.txt", PAIR_FIELDS)
    fields = {"question": "q", "answer_a": "word " * 400, "answer_b": "b"}
    empty = _judge(tokenizer, Scripted(str), tmp_path).fill(template, fields | {"answer_a": ""}, answers=())
    limit = len(tokenizer.encode(empty, add_special_tokens=False)) + 100  # room for answers of ~100 tokens
    short = _judge(tokenizer, Scripted(str), tmp_path, max_prompt_tokens=limit, max_answer_tokens=50)
    assert "[... answer truncated]" in short.fill(template, fields, answers=("answer_a", "answer_b"))
    dropping = _judge(tokenizer, Scripted(str), tmp_path, max_prompt_tokens=limit, overlong="drop")
    assert dropping.fill(template, fields, answers=("answer_a", "answer_b")) is None and dropping.counts.overlong == 1
    assert short.counts.cut == 1 and short.counts.overlong == 0


def test_benchmark_settings_are_checked_up_front(tmp_path):
    from megatron_elo.config.loader import ConfigError, config_from_dict, read_yaml
    from megatron_elo.config.validate import validate

    raw = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    raw["output_dir"] = str(tmp_path)
    raw["eval"]["benchmarks"] = [
        {"name": "alpaca", "kind": "pairwise_vs_reference", "path": str(DATA / "alpaca_eval.json"), "baseline_player": "weak"},
        {"name": "arena", "kind": "pairwise_vs_baseline", "path": str(tmp_path / "missing.jsonl")},
        {"name": "arena", "kind": "single_grade", "path": str(DATA / "mt_bench_question.jsonl"), "quantiles": [0.9, 0.1],
         "template_dir": str(tmp_path)},
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pairwise.txt").write_text("{question} {answer_a}")
    raw["eval"]["benchmarks"].append({"name": "alpaca2", "kind": "pairwise_vs_reference", "path": str(DATA / "alpaca_eval.json"),
                                      "template_dir": str(tmp_path / "bad")})
    raw["eval"]["benchmark"] = "mt"
    with pytest.raises(ConfigError) as err:
        validate(config_from_dict(raw))
    text = str(err.value)
    for expected in ("eval.benchmarks.0.baseline_player: only pairwise_vs_baseline reads it",
                     "eval.benchmarks.1: pairwise_vs_baseline needs exactly one of baseline_player",
                     "eval.benchmarks.1.path: no file at", "eval.benchmarks.2.name: 'arena' is used by several",
                     "eval.benchmarks.2.quantiles: two increasing numbers", "eval.benchmarks.2.template_dir:",
                     "has no single.txt", "judge.kind: the benchmarks' judge is an LLM",
                     "eval.benchmark: 'mt' is not a benchmark", "eval.benchmarks.3.template_dir: judge template",
                     "must use exactly ['answer_a', 'answer_b', 'question']"):
        assert expected in text, expected


# ---------------------------------------------------------------- training: point with the LLM judge's grades


def test_point_grades_single_answers_with_the_llm_judge_and_evaluation_keeps_its_pairs(tokenizer, tmp_path, monkeypatch):
    from megatron_elo.config.loader import config_from_dict, read_yaml
    from megatron_elo.flow import Game, Prompt, Response
    from megatron_elo.judges import build as judge_build
    from megatron_elo.judges.grading import GradingJudge, load_grade_template
    from megatron_elo.judges.llm import LLMJudge
    from megatron_elo.judges.llm import load_template as pairwise_template

    def reply(prompt):
        if "[Answer A]" in prompt:
            return "[[A]]"
        return "Rating: [[8]]" if "good" in prompt else "Rating: [[2]]" if "bad" in prompt else "no idea"

    pairwise = LLMJudge(backend=Scripted(reply), tokenizer=tokenizer, template=pairwise_template(None), swap_positions=False)
    judge = GradingJudge(pairwise=pairwise, template=load_grade_template(None))
    prompt = Prompt(prompt_id="p", text="Say something.")
    games = [Game(game_id=i, prompt=prompt, opponent=None, policy=Response(player="policy", prompt_id="p", sample_index=i, text=t))
             for i, t in enumerate(["a good answer", "a bad answer", "unclear"])]
    games.append(Game(game_id=3, prompt=prompt, policy=games[0].policy,
                      opponent=Response(player="rival", prompt_id="p", sample_index=0, text="other")))
    verdicts = judge.judge(games, None)
    assert [v.score for v in verdicts[:2]] == [8.0, 2.0] and not verdicts[2].valid and "no clear 1-10 grade" in verdicts[2].detail
    assert verdicts[3].winner in ("policy", "opponent")  # evaluation's pairwise games go to the pairwise judge
    assert judge.metrics()["judge/grade_invalid_rate"] == pytest.approx(1 / 3)
    restored = GradingJudge(pairwise=LLMJudge(backend=Scripted(reply), tokenizer=tokenizer, template=pairwise_template(None)),
                            template=load_grade_template(None))
    restored.load_state_dict(judge.state_dict())
    assert restored.metrics() == judge.metrics()

    # the point recipe's training judge with judge.kind=llm is this grader (no longer refused)
    raw = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    raw["judge"] = {"kind": "llm", "model": {"path": "unused"}}
    raw["algorithm"]["name"] = "point"
    monkeypatch.setattr("megatron_elo.judges.llm.build_llm_judge", lambda *a, **k: pairwise)
    built = judge_build.build_judge(config_from_dict(raw), world_size=1)
    assert isinstance(built, GradingJudge) and built.pairwise is pairwise
    assert judge_build.build_judge(config_from_dict(raw), world_size=1, training=False) is pairwise
