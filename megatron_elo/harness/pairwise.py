"""The pairwise protocols: AlpacaEval-style (vs a reference answer) and Arena-Hard-style (vs a baseline).

    result = judge_vs_reference(bench, questions, answers, references, judge, template)
    result = judge_vs_baseline(bench, questions, answers, baseline_answers, judge, template, baseline_name="gpt-4")

``answers``: {model: {question_id: text}}. Every game is judged in both orders, all models' prompts
in one batch. vs reference: a question's preference is the mean of its two orders ([[A]] / [[B]] /
[[C]], C a tie), kept only when both orders give a verdict; win rate (ties half) with its standard
error, and the length-controlled win rate (``stats.length_controlled_win_rate``) with a bootstrap
standard error. vs baseline: each order is one battle on arena-hard-auto's five-level scale (a strong
verdict counts ``strong_weight`` games), an order without a verdict is dropped; Bradley-Terry ratings
over every model with the baseline anchored at 1000, the score is the win probability against it,
both with bootstrap quantile intervals over battles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from megatron_elo.config.eval_schema import BenchmarkConfig
from megatron_elo.harness.judging import CachedJudge
from megatron_elo.harness.questions import BenchQuestion
from megatron_elo.harness.results import BenchmarkResult, LengthPoint, ModelRow, Number
from megatron_elo.harness.stats import bootstrap, bradley_terry, expected_score, length_controlled_win_rate
from megatron_elo.judges.verdicts import parse_scale_verdict, read_reply, visible_text

PAIR_FIELDS = ("question", "answer_a", "answer_b")
LC_DIFFERENCE = ("length control differs from AlpacaEval 2.0: its GLM is an L1 logistic regression (5-fold CV) with a "
                 "per-instruction difficulty fitted once over its leaderboard's models and regularised towards the "
                 "baseline with 'gamed' verbose / concise baselines at weight 0.2; here the fit is L2 (strength "
                 "length_control_l2), the difficulty of a question is how much the other models of this call lost on "
                 "it (absent with one model), and lengths are characters as there")
LOCAL_JUDGE = ("judged by a local model: absolute numbers are not comparable with published API-judged AlpacaEval / "
               "MT-Bench / Arena-Hard results; compare models and checkpoints under this one judge")


def _prompts(judge: CachedJudge, template: str, question: str, first: str, second: str) -> tuple[str | None, str | None]:
    """(prompt with ``first`` as A, prompt with it as B); a prompt that cannot fit is None."""
    a_first = judge.fill(template, {"question": question, "answer_a": first, "answer_b": second}, answers=PAIR_FIELDS[1:])
    b_first = judge.fill(template, {"question": question, "answer_a": second, "answer_b": first}, answers=PAIR_FIELDS[1:])
    return a_first, b_first


def _judge_both_orders(judge: CachedJudge, template: str, games: Sequence[tuple[str, str, str]], description: str):
    """games: (question, candidate answer, other answer) -> [(reply with candidate as A, as B)]."""
    prompts = [p for question, mine, other in games for p in _prompts(judge, template, question, mine, other)]
    replies = judge.replies(prompts, description=description)
    return list(zip(replies[0::2], replies[1::2], strict=True))


def _letter_score(reply, candidate_is_a: bool) -> float | None:
    """The candidate's score in one order from an [[A]] / [[B]] / [[C]] reply (None: no verdict)."""
    if reply is None or reply.error is not None:
        return None
    letter, _ = read_reply(reply)
    if letter is None:
        return None
    if letter == "tie":
        return 0.5
    return 1.0 if (letter == "A") == candidate_is_a else 0.0


def _difficulty(preference: Mapping[str, Mapping[str, float]], model: str, ids: Sequence[str]) -> np.ndarray | None:
    """Per question: 0.5 minus the other models' mean preference on it (0 where none judged it); None alone."""
    others = [m for m in preference if m != model]
    if not others:
        return None
    out = []
    for qid in ids:
        seen = [preference[m][qid] for m in others if qid in preference[m]]
        out.append(0.5 - float(np.mean(seen)) if seen else 0.0)
    return np.asarray(out)


def judge_vs_reference(bench: BenchmarkConfig, questions: Sequence[BenchQuestion], answers: Mapping[str, Mapping[str, str]],
                       references: Mapping[str, str], judge: CachedJudge, template: str,
                       steps: Mapping[str, int | None] | None = None) -> BenchmarkResult:
    """AlpacaEval-style win rates of every model against ``references`` ({question_id: text})."""
    games = [(m, q) for m in answers for q in questions]
    replies = _judge_both_orders(judge, template, [(q.turns[0], answers[m][q.question_id], references[q.question_id])
                                                   for m, q in games], f"{bench.name}: judging")
    preference: dict[str, dict[str, float]] = {m: {} for m in answers}
    invalid = {m: 0 for m in answers}
    points = []
    for (model, question), (as_a, as_b) in zip(games, replies, strict=True):
        scores = (_letter_score(as_a, True), _letter_score(as_b, False))
        if None in scores:
            invalid[model] += 1
            continue
        preference[model][question.question_id] = float(np.mean(scores))
        points.append(LengthPoint(model=model, preference=float(np.mean(scores)),
                                  length_delta=len(answers[model][question.question_id]) - len(references[question.question_id])))
    rows = []
    for model in answers:
        ids = list(preference[model])
        if not ids:
            nan = Number(value=float("nan"), low=float("nan"), high=float("nan"))
            rows.append(ModelRow(model=model, numbers={"lc_win_rate": nan, "win_rate": nan},
                                 counts={"questions": 0, "invalid": invalid[model]}, step=(steps or {}).get(model)))
            continue
        pref = np.asarray([preference[model][q] for q in ids])
        delta = np.asarray([len(answers[model][q]) - len(references[q]) for q in ids], dtype=np.float64)
        difficulty = _difficulty(preference, model, ids)

        def lc(rows_: np.ndarray, pref=pref, delta=delta, difficulty=difficulty) -> float:
            return length_controlled_win_rate(pref[rows_], delta[rows_], None if difficulty is None else difficulty[rows_],
                                              l2=bench.length_control_l2).win_rate

        everything = np.arange(len(ids))
        lc_value = lc(everything)
        lc_se = float(np.std(bootstrap(lc, len(ids), rounds=bench.bootstrap_rounds, seed=bench.seed), ddof=1)) if len(ids) > 1 else 0.0
        rate = float(pref.mean())
        rate_se = float(pref.std(ddof=1) / np.sqrt(len(pref))) if len(pref) > 1 else 0.0
        rows.append(ModelRow(model=model, step=(steps or {}).get(model),
                             numbers={"lc_win_rate": Number(value=lc_value, low=lc_value - 1.96 * lc_se, high=lc_value + 1.96 * lc_se),
                                      "win_rate": Number(value=rate, low=rate - 1.96 * rate_se, high=rate + 1.96 * rate_se),
                                      "length_delta": Number(value=float(delta.mean()), low=float(delta.min()), high=float(delta.max()))},
                             counts={"questions": len(ids), "invalid": invalid[model],
                                     "wins": int((pref == 1).sum()), "ties": int(((pref > 0) & (pref < 1)).sum())}))
    return BenchmarkResult(name=bench.name, kind=bench.kind, headline="lc_win_rate", rows=tuple(rows), points=tuple(points),
                           interval="95%: 1.96 standard errors (LC: bootstrap over questions, "
                                    f"{bench.bootstrap_rounds} resamples); length_delta: mean [min, max] characters",
                           notes=(LOCAL_JUDGE, LC_DIFFERENCE))


SCALE_OUTCOME = {"A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False), "B>>A": (0.0, True)}


def _battle(reply, strong_weight: int) -> tuple[float, int] | None:
    """(outcome for side A, games it counts for) of one five-level reply; None without a verdict."""
    if reply is None or reply.error is not None:
        return None
    text, _ = visible_text(reply)
    verdict = parse_scale_verdict(text) if text is not None else None
    if verdict is None:
        return None
    outcome, strong = SCALE_OUTCOME[verdict]
    return outcome, strong_weight if strong else 1


def judge_vs_baseline(bench: BenchmarkConfig, questions: Sequence[BenchQuestion], answers: Mapping[str, Mapping[str, str]],
                      baseline_answers: Mapping[str, str], judge: CachedJudge, template: str, *, baseline_name: str,
                      steps: Mapping[str, int | None] | None = None) -> BenchmarkResult:
    """Arena-Hard-style scores of every model against the baseline's answers."""
    models = [baseline_name] + [m for m in answers if m != baseline_name]
    games = [(m, q) for m in models[1:] for q in questions]
    # arena-hard-auto's game 1 shows the baseline as A, game 2 the model as A
    replies = _judge_both_orders(judge, template, [(q.turns[0], baseline_answers[q.question_id], answers[m][q.question_id])
                                                   for m, q in games], f"{bench.name}: judging")
    a_index, b_index, outcome = [], [], []
    invalid = {m: 0 for m in models}
    points = []
    for (model, question), (baseline_first, model_first) in zip(games, replies, strict=True):
        index = models.index(model)
        scored = []
        for reply, sides in ((baseline_first, (0, index)), (model_first, (index, 0))):
            battle = _battle(reply, bench.strong_weight)
            if battle is None:
                invalid[model] += 1
                continue
            for _ in range(battle[1]):
                a_index.append(sides[0])
                b_index.append(sides[1])
                outcome.append(battle[0])
            scored.append(battle[0] if sides[0] == index else 1.0 - battle[0])
        if scored:
            points.append(LengthPoint(model=model, preference=float(np.mean(scored)),
                                      length_delta=len(answers[model][question.question_id]) - len(baseline_answers[question.question_id])))
    a_index, b_index, outcome = np.asarray(a_index), np.asarray(b_index), np.asarray(outcome)

    def ratings(rows_: np.ndarray) -> np.ndarray:
        return bradley_terry(a_index[rows_], b_index[rows_], outcome[rows_], n_models=len(models), anchor=0)

    fitted = ratings(np.arange(len(outcome))) if len(outcome) else np.full(len(models), np.nan)
    resampled = bootstrap(ratings, len(outcome), rounds=bench.bootstrap_rounds, seed=bench.seed) if len(outcome) else None
    low_q, high_q = bench.quantiles
    rows = []
    for index, model in enumerate(models):
        played = int(((a_index == index) | (b_index == index)).sum()) if index else int(len(outcome))
        if resampled is None:
            low = high = float("nan")
            r_low = r_high = float("nan")
        else:
            r_low, r_high = np.quantile(resampled[:, index], [low_q, high_q])
            low, high = expected_score(r_low, fitted[0]), expected_score(r_high, fitted[0])
        rows.append(ModelRow(model=model, step=(steps or {}).get(model),
                             numbers={"score": Number(value=float(expected_score(fitted[index], fitted[0])), low=float(low), high=float(high)),
                                      "rating": Number(value=float(fitted[index]), low=float(r_low), high=float(r_high))},
                             counts={"games": played, "invalid": invalid[model]}))
    rows.sort(key=lambda row: -row.numbers["score"].value if not np.isnan(row.numbers["score"].value) else 0.0)
    return BenchmarkResult(name=bench.name, kind=bench.kind, headline="score", rows=tuple(rows), points=tuple(points),
                           interval=f"bootstrap over games ({bench.bootstrap_rounds} resamples), quantiles "
                                    f"{low_q:g} / {high_q:g}; score = Bradley-Terry win probability against {baseline_name}",
                           notes=(LOCAL_JUDGE, f"a strong verdict (A>>B) counts {bench.strong_weight} games, as "
                                               f"arena-hard-auto does; {baseline_name} is anchored at rating 1000"))
