"""compare's curriculum measurements (analysis/curriculum.py) on hand-built run summaries, its method
variants, and the report's tables and plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from megatron_elo.analysis.compare_report import SelectionSettings, format_table, method_result, plot_curves
from megatron_elo.analysis.curriculum import (
    mean_interval,
    near_share,
    opponent_swing,
    rating_against,
    selection_shift,
)
from megatron_elo.elo.selection import selection_probabilities
from megatron_elo.utils.numeric import nan_mean

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REFERENCE = {"weak": 800.0, "even": 1000.0, "strong": 1400.0}


def _summary(*, p_select=None) -> dict:
    """Two steps of a run with evaluations at steps 0 and 1 (the policy passes `even` between them)."""
    evals = [{"step": 0, "win_rate": 0.4, "per_opponent": {"weak": 0.76, "even": 0.5, "strong": 1 / 11}},
             {"step": 1, "win_rate": 0.6, "per_opponent": {"weak": 0.9, "even": 0.7, "strong": 0.3}}]
    trace = [{"step": 1, "prompts": {"even": 3, "strong": 1}, "p_select": p_select or {}, "reward_mean": 0.25,
              "no_signal": 0.5},
             {"step": 2, "prompts": {"even": 2, "weak": 2}, "p_select": p_select or {}, "reward_mean": 0.75,
              "no_signal": 0.0}]
    history = [{"step": 1, "policy": 1010.0, "weak": 790.0, "even": 1000.0, "strong": 1400.0},
               {"step": 2, "policy": 1030.0, "weak": 830.0, "even": 990.0, "strong": 1400.0}]
    return {"win_rate_before": 0.4, "win_rate_after": 0.6, "evals": evals, "trace": trace, "elo_history": history}


def test_mean_interval_hand_values():
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / math.sqrt(3)))
    assert mean_interval([0.5, float("nan")])[0] == 0.5 and math.isnan(mean_interval([0.5])[1])
    assert all(math.isnan(v) for v in mean_interval([]))


def test_rating_against_inverts_expected_scores():
    assert rating_against({"even": 0.5, "strong": 1 / 11}, REFERENCE) == pytest.approx(1000.0, abs=1e-6)
    assert rating_against({"strong": 10 / 11}, REFERENCE) == pytest.approx(1800.0, abs=1e-6)
    assert rating_against({"weak": 1.0}, REFERENCE) == pytest.approx(1600.0, abs=1e-6)  # clamped: the range + 800
    assert math.isnan(rating_against({}, REFERENCE))


def test_near_share_uses_the_latest_evaluation_before_each_step():
    # step 1 sees eval 0 (even at 0.5 is near, strong at 0.09 not): 3 of 4; step 2 sees eval 1 (even 0.7, weak 0.9): 0
    assert near_share(_summary()) == [0.75, 0.0]
    assert opponent_swing(_summary()) == {"weak": 40.0, "even": 10.0, "strong": 0.0}


def test_selection_shift_is_zero_at_reference_ratings_and_hand_computed_otherwise():
    names = list(REFERENCE)
    clean = selection_probabilities(1000.0, [REFERENCE[n] for n in names], temperature=100.0)
    settings = dict(temperature=100.0, selection="rating_gap", target_win_rate=0.5, initial_policy=1000.0)
    summary = _summary(p_select=dict(zip(names, clean.tolist(), strict=True)))
    first, second = selection_shift(summary, REFERENCE, **settings)
    assert first == pytest.approx(0.0, abs=1e-12)  # step 1 drew with the initial policy rating 1000
    at_1010 = selection_probabilities(1010.0, [REFERENCE[n] for n in names], temperature=100.0)
    assert second == pytest.approx(0.5 * sum(abs(a - b) for a, b in zip(clean, at_1010, strict=True)))


def test_method_result_table_and_plots(tmp_path):
    selection = SelectionSettings(temperature=100.0)
    result = method_result("elo_evolve", [_summary(), _summary()], target=0.5, reference=REFERENCE, selection=selection)
    assert result.steps_to_target == [1, 1] and result.final == [0.6, 0.6]
    assert result.no_signal == [0.25, 0.25] and result.chosen_win == [0.5, 0.5] and result.near == [0.375, 0.375]
    assert result.final_elo[0] == pytest.approx(rating_against({"weak": 0.9, "even": 0.7, "strong": 0.3}, REFERENCE))
    assert result.curves[0][1]["train_elo"] == 1010.0 and result.curves[0][0]["train_elo"] is None
    assert result.elo_error[0] == pytest.approx(1010.0 - result.final_elo[0])
    point = method_result("point", [_summary()], target=0.5, reference=REFERENCE, selection=None)
    assert math.isnan(point.chosen_win[0]) and math.isnan(point.shift[0])
    point_without_ratings = method_result("point", [{**_summary(), "elo_history": []}], target=0.5, reference=REFERENCE,
                                          selection=None)
    assert math.isnan(point_without_ratings.elo_error[0]) and math.isnan(point_without_ratings.swing[0])
    table = format_table([result, point], start=0.4, target=0.5)
    assert "| elo_evolve | 0.600 +- 0.000 | 0.600, 0.600 |" in table and "| point | 0.600 | 0.600 |" in table
    written = plot_curves(tmp_path, [result, point])
    assert [p.name for p in written] == ["compare_curves.png", "compare_mechanism.png", "compare_elo_evolve.png",
                                         "compare_point.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_compare_variants_resolve_like_the_child_processes():
    from megatron_elo.cli import load_and_validate
    from megatron_elo.compare import (
        child_config,
        config_differences,
        method_overrides,
        parse_methods,
        run_name_of,
    )
    from megatron_elo.config.loader import dump_yaml

    config = str(CONFIGS / "tiny_cpu_ladder.yaml")
    cfg = load_and_validate(config, [], check_paths=False)
    opponents = tuple(o.name for o in cfg.opponents)
    specs = parse_methods("point,static_pairwise:all,elo_evolve:anchored:T50,elo_evolve:window_mle", opponents)
    assert specs == ("point", *(f"static_pairwise:{n}" for n in opponents), "elo_evolve:anchored:T50",
                     "elo_evolve:window_mle")
    for spec in specs:
        child = child_config(cfg, spec, 7)
        overrides = [*method_overrides(cfg, spec), "seed=7", f"run_name={run_name_of(spec, 7)}"]
        assert config_differences(child, dump_yaml(load_and_validate(config, overrides, check_paths=False))) == [], spec
    anchored = child_config(cfg, "elo_evolve:anchored:T50", 7)
    assert (anchored.algorithm.elo.rating_update, anchored.algorithm.elo.temperature) == ("anchored", 50.0)
    assert child_config(cfg, "static_pairwise:r200", 7).algorithm.static_opponent == "r200"
    assert run_name_of("static_pairwise:r200", 7) == "compare_static_pairwise-r200_s7"
    for bad, message in (("static_pairwise:r999", "no opponent 'r999'"), ("elo_evolve:fast", "neither a rating_update"),
                         ("dpo:anchored", "dpo has no variants"), ("elo_evolve:T-5", "neither a rating_update")):
        with pytest.raises(ValueError, match=message):
            parse_methods(bad, opponents)


def test_compare_jobs_give_each_cpu_child_its_own_cores(monkeypatch):
    import dataclasses

    from megatron_elo.cli import load_and_validate
    from megatron_elo.compare import slot_environment

    cfg = load_and_validate(str(CONFIGS / "tiny_cpu_ladder.yaml"), [], check_paths=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    slots = [slot_environment(k, 2, cfg) for k in range(2)]
    assert [(e["VLLM_CPU_OMP_THREADS_BIND"], e["OMP_NUM_THREADS"]) for e in slots] == [("0,1", "2"), ("2,3", "2")]
    assert slot_environment(0, 1, cfg) is None  # one job: the machine's defaults
    gpu = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, device="cuda"))
    assert slot_environment(1, 2, gpu) is None


def test_nan_mean_skips_the_unscored_values():
    """The mean of the scored values, from a list or an array; NaN (no warning) when nothing is scored."""
    import warnings

    import numpy as np

    assert nan_mean([1.0, math.nan, 4.0]) == 2.5 and nan_mean(np.array([math.nan, 2.0])) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(nan_mean([math.nan])) and math.isnan(nan_mean([]))
