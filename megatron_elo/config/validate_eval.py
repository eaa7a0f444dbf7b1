"""Checks of the evaluation harness's benchmarks (``eval.benchmarks``, ``eval.benchmark``), called by ``validate``."""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig


def _check_templates(bench, where: str, need) -> None:
    """Each template the benchmark's kind needs is in its template_dir and uses exactly its fields."""
    from megatron_elo.harness.grading import TEMPLATE_FIELDS
    from megatron_elo.harness.judging import load_template
    from megatron_elo.harness.pairwise import PAIR_FIELDS

    fields = TEMPLATE_FIELDS if bench.kind == "single_grade" else {"pairwise": PAIR_FIELDS}
    for name, used in fields.items():
        path = Path(bench.template_dir) / f"{name}.txt"
        if not need(path.is_file(), f"{where}.template_dir: {bench.template_dir!r} has no {name}.txt ({bench.kind} needs "
                                    f"{', '.join(n + '.txt' for n in fields)})"):
            continue
        try:
            load_template(path, used)
        except ValueError as err:
            need(False, f"{where}.template_dir: {err}")


def check_benchmarks(cfg: RunConfig, need, *, check_paths: bool) -> None:
    """Record every problem of the benchmarks with ``need(condition, message)``."""
    names = [b.name for b in cfg.eval.benchmarks]
    opponents = [o.name for o in cfg.opponents]
    for i, bench in enumerate(cfg.eval.benchmarks):
        where = f"eval.benchmarks.{i}"
        need(names.count(bench.name) == 1, f"{where}.name: {bench.name!r} is used by several benchmarks; names are unique")
        need(bench.num_questions is None or bench.num_questions >= 1,
             f"{where}.num_questions: must be >= 1 or null (all), got {bench.num_questions}")
        need(bench.temperature >= 0, f"{where}.temperature: must be >= 0 (0 = greedy), got {bench.temperature}")
        limit = cfg.rollout.engine.max_model_len
        need(1 <= bench.max_new_tokens < limit, f"{where}.max_new_tokens: must be in [1, rollout.engine.max_model_len="
                                                f"{limit}) (candidates answer on the policy's engine layout), got "
                                                f"{bench.max_new_tokens}")
        need(bench.bootstrap_rounds >= 10, f"{where}.bootstrap_rounds: must be >= 10, got {bench.bootstrap_rounds}")
        need(bench.length_control_l2 > 0, f"{where}.length_control_l2: must be > 0, got {bench.length_control_l2}")
        need(len(bench.quantiles) == 2 and 0 <= bench.quantiles[0] < bench.quantiles[1] <= 1,
             f"{where}.quantiles: two increasing numbers in [0, 1] (lower, upper), got {bench.quantiles}")
        need(bench.strong_weight >= 1, f"{where}.strong_weight: must be >= 1, got {bench.strong_weight}")
        need(bench.max_turns in (1, 2), f"{where}.max_turns: 1 or 2, got {bench.max_turns}")
        for field in ("reference_player", "baseline_player"):
            player = getattr(bench, field)
            need(player is None or player in opponents, f"{where}.{field}: {player!r} is not an opponent name; "
                                                        f"choose from {opponents}")
        if bench.kind == "pairwise_vs_baseline":
            need((bench.baseline_player is None) != (bench.baseline_answers is None),
                 f"{where}: pairwise_vs_baseline needs exactly one of baseline_player (an opponent that answers) and "
                 f"baseline_answers (a file of the baseline's answers)")
        for field, kinds in (("reference_player", ("pairwise_vs_reference",)),
                             ("baseline_player", ("pairwise_vs_baseline",)), ("baseline_answers", ("pairwise_vs_baseline",))):
            need(getattr(bench, field) is None or bench.kind in kinds,
                 f"{where}.{field}: only {'/'.join(kinds)} reads it (kind is {bench.kind}); remove it")
        if check_paths:
            need(Path(bench.path).is_file(), f"{where}.path: no file at {bench.path!r}; point it at the benchmark's "
                                             f"question file")
            need(bench.baseline_answers is None or Path(bench.baseline_answers).is_file(),
                 f"{where}.baseline_answers: no file at {bench.baseline_answers!r}")
            if bench.template_dir is not None:
                _check_templates(bench, where, need)
    if cfg.eval.benchmarks or cfg.eval.benchmark:
        need(cfg.judge.kind == "llm", f"judge.kind: the benchmarks' judge is an LLM (judge.model on its own engine); "
                                      f"got {cfg.judge.kind}")
    need(cfg.eval.benchmark is None or cfg.eval.benchmark in names,
         f"eval.benchmark: {cfg.eval.benchmark!r} is not a benchmark of eval.benchmarks; choose from {names}")
