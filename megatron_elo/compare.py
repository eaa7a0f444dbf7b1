"""``megatron-elo compare``: point vs static pairwise vs Elo-Evolve (and the pair losses) on the same
budget and seeds.

    megatron-elo compare configs/tiny_cpu.yaml --seeds 3 [--methods elo_evolve,dpo,simpo,sppo,inpo] [KEY=VALUE ...]
    megatron-elo compare configs/tiny_cpu_tsr.yaml --seeds 3 --methods dpo,tsr,eva,evolve   (a config with their sections)

A pair method (dpo, ipo, simpo, orpo, sppo, inpo) runs ``algorithm.name=pairs_online`` with that loss and
the config's ``algorithm.pairs`` settings (games, rule, reference, epochs); its loss's own knobs are the
config's when ``algorithm.pairs.loss`` is that method, else its authors' (``PAIR_METHODS``).

Each (method, seed) is a separate ``megatron-elo train`` process (so engines never pile up in one
process), named ``compare_<method>_s<seed>`` under the config's output_dir; finished runs are reused
when their resolved config is the one this comparison would train with (else it stops and says which
keys differ: delete those runs or pick another output_dir).
``--jobs N`` trains N children at a time.

Variants of a method (``parse_methods``): ``static_pairwise:<opponent>`` (``:all``, one per opponent),
``elo_evolve:<rating_update>``, ``elo_evolve:T<temperature>``. The tables (final held-out win rate and
held-out Elo, mean +- 95% interval over seeds, steps to the target; the curriculum's measurements:
``analysis/curriculum.py``) are printed and written to ``<output_dir>/compare.md`` and ``compare.json``
with the plots (``compare_curves.png``, ``compare_mechanism.png``, ``compare_<method>.png``), all logged
to MLflow as run "compare".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import subprocess
import sys
from pathlib import Path

from megatron_elo.analysis.compare_report import MethodResult, SelectionSettings, method_result, plot_curves
from megatron_elo.config.loader import dump_yaml, flatten
from megatron_elo.config.schema import RunConfig
from megatron_elo.utils.logging import get_logger, progress_bar

log = get_logger(__name__)
METHODS = ("point", "static_pairwise", "elo_evolve")  # the default comparison: the paper's three
# recipes run as the config sets them up (their own sections: e.g. configs/tiny_cpu_tsr.yaml's anchor)
RECIPE_METHODS = ("eva", "tsr", "evolve")
# each pair loss's knobs as its authors set them (../shared/ALGORITHMS.md); SPPO's eta 1000 is beta 0.001
PAIR_METHODS: dict[str, dict[str, object]] = {
    "dpo": {"beta": 0.1}, "ipo": {"beta": 0.1}, "simpo": {"beta": 2.5, "simpo_gamma_beta_ratio": 0.55},
    "orpo": {"orpo_lambda": 0.1}, "sppo": {"beta": 0.001}, "inpo": {"beta": 0.005, "inpo_tau_ratio": 1 / 3},
}


RATING_UPDATES = ("batch", "anchored", "prompt_share", "window_mle")


def parse_methods(text: str, opponents: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``--methods`` "a,b,c" -> method specs (ValueError naming a stranger). A spec is a GRPO recipe, a
    pair loss, or a variant: ``static_pairwise:<opponent>`` (``static_pairwise:all``: one per name of
    ``opponents``), ``elo_evolve:<rating_update>`` or ``elo_evolve:T<temperature>`` (both may be chained:
    ``elo_evolve:anchored:T50``)."""
    specs: list[str] = []
    for spec in (name.strip() for name in text.split(",") if name.strip()):
        if spec == "static_pairwise:all":
            specs += [f"static_pairwise:{name}" for name in opponents]
        else:
            specs.append(spec)
    known = [*METHODS, *RECIPE_METHODS, *PAIR_METHODS]
    unknown = [s for s in specs if _variant_problem(s, opponents, known)]
    if unknown or not specs:
        problems = "; ".join(_variant_problem(s, opponents, known) for s in unknown) or repr(text)
        raise ValueError(f"--methods: {problems}. Choose from {known}, static_pairwise:<opponent> / :all, "
                         f"elo_evolve:<{' | '.join(RATING_UPDATES)}> / elo_evolve:T<temperature>")
    return tuple(dict.fromkeys(specs))


def _variant_problem(spec: str, opponents: tuple[str, ...], known: list[str]) -> str:
    """Why ``spec`` is not a method (empty when it is one)."""
    base, *variants = spec.split(":")
    if base not in known:
        return f"unknown {base!r}"
    if variants and base not in ("static_pairwise", "elo_evolve"):
        return f"{base} has no variants ({spec!r})"
    for variant in variants:
        if base == "static_pairwise" and opponents and variant not in opponents:
            return f"{spec!r}: no opponent {variant!r} (opponents: {list(opponents)})"
        if base == "elo_evolve" and variant not in RATING_UPDATES and not _is_temperature(variant):
            return f"{spec!r}: {variant!r} is neither a rating_update nor T<temperature>"
    return ""


def _is_temperature(variant: str) -> bool:
    try:
        return variant.startswith("T") and float(variant[1:]) > 0
    except ValueError:
        return False


def method_settings(cfg: RunConfig, spec: str) -> dict[str, object]:
    """The dotted settings that make ``cfg`` train the method ``spec`` (see ``parse_methods``)."""
    base, *variants = spec.split(":")
    if base in PAIR_METHODS:
        knobs = {} if cfg.algorithm.pairs.loss == base else PAIR_METHODS[base]
        return {"algorithm.name": "pairs_online", "algorithm.pairs.loss": base,
                **{f"algorithm.pairs.{key}": value for key, value in knobs.items()}}
    settings: dict[str, object] = {"algorithm.name": base}
    for variant in variants:
        if base == "static_pairwise":
            settings["algorithm.static_opponent"] = variant
        elif _is_temperature(variant):
            settings["algorithm.elo.temperature"] = float(variant[1:])
        else:
            settings["algorithm.elo.rating_update"] = variant
    return settings


def method_overrides(cfg: RunConfig, method: str) -> list[str]:
    """The dotted overrides that make ``cfg`` train ``method``."""
    return [f"{key}={value}" for key, value in method_settings(cfg, method).items()]


def run_name_of(method: str, seed: int) -> str:
    """A child run's name: ``compare_<method>_s<seed>``, a variant's colons as dashes."""
    return f"compare_{method.replace(':', '-')}_s{seed}"


def child_config(cfg: RunConfig, method: str, seed: int) -> RunConfig:
    """The config the (method, seed) child run trains with."""
    from megatron_elo.config.loader import apply_overrides, config_from_dict, config_to_dict

    return config_from_dict(apply_overrides(config_to_dict(cfg), child_overrides(cfg, method, seed)))


def child_overrides(cfg: RunConfig, method: str, seed: int) -> list[str]:
    """The dotted overrides, on top of the comparison's, of the (method, seed) child."""
    return [*method_overrides(cfg, method), f"seed={seed}", f"run_name={run_name_of(method, seed)}"]


def config_differences(expected: RunConfig, resolved_yaml: str) -> list[str]:
    """Dotted keys whose value in a run's ``resolved_config.yaml`` differs from ``expected``'s."""
    import yaml

    want, have = flatten(yaml.safe_load(dump_yaml(expected))), flatten(yaml.safe_load(resolved_yaml))
    return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))


def slot_environment(slot: int, jobs: int, cfg: RunConfig) -> dict[str, str] | None:
    """The environment of a child in ``slot`` of ``jobs`` (None: inherit ours). On CPU each slot gets
    its own cores: vLLM's CPU backend binds its OpenMP threads to every core by default, and two
    children bound to the same cores spin against each other (measured: 2 s a step instead of 0.3)."""
    if jobs == 1 or cfg.cluster.device != "cpu" or cfg.cluster.devices_per_node > 1:
        return None  # GPU children, or a torchrun child whose ranks vLLM binds itself
    cores = sorted(os.sched_getaffinity(0))
    share = cores[slot * len(cores) // jobs:(slot + 1) * len(cores) // jobs] or [cores[slot % len(cores)]]
    return {**os.environ, "OMP_NUM_THREADS": str(len(share)), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, share))}


def run_one(config: str, overrides: list[str], method: str, seed: int, cfg: RunConfig,
            env: dict[str, str] | None = None) -> dict:
    """Train one (method, seed) in a child process (``env``: its environment), or reuse its finished
    summary when it was trained with the same resolved config (ValueError naming the keys otherwise)."""
    expected = child_config(cfg, method, seed)
    run_name = expected.run_name
    run_dir = Path(cfg.output_dir) / run_name
    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and (run_dir / "resolved_config.yaml").is_file():
        differing = config_differences(expected, (run_dir / "resolved_config.yaml").read_text())
        if differing:
            raise ValueError(f"{run_dir} is a finished run of another config ({', '.join(differing[:8])} differ): delete "
                             f"the compare_* runs there to train them again, or set output_dir to a new directory")
    if not summary_file.is_file():
        command = [sys.executable, "-m", "megatron_elo.cli", "train", config, *overrides, *child_overrides(cfg, method, seed)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not summary_file.is_file():
            raise RuntimeError(f"{run_name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(summary_file.read_text())


def compare(cfg: RunConfig, config: str, overrides: list[str], *, seeds: int, target: float | None,
            methods: tuple[str, ...] = METHODS, jobs: int = 1) -> tuple[list[MethodResult], float, float]:
    """Run every method for ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...), ``jobs`` child processes at a
    time; returns (results, the starting win rate, the target used: ``target`` or start + 0.05)."""
    from concurrent.futures import ThreadPoolExecutor

    from megatron_elo.tracking import prepare_store

    order = [(method, seed) for seed in range(cfg.seed, cfg.seed + seeds) for method in methods]
    if jobs > 1:
        prepare_store(cfg.tracking, output_dir=cfg.output_dir)
    summaries: dict[tuple[str, int], dict] = {}
    free_slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        free_slots.put(slot)

    def in_a_slot(method: str, seed: int) -> dict:
        slot = free_slots.get()
        try:
            return run_one(config, overrides, method, seed, cfg, env=slot_environment(slot, jobs, cfg))
        finally:
            free_slots.put(slot)

    with progress_bar(total=len(order), description="compare") as bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {key: pool.submit(in_a_slot, *key) for key in order}
        for key, future in running.items():
            summaries[key] = future.result()
            bar.advance()
    runs = {m: [summaries[(m, seed)] for seed in range(cfg.seed, cfg.seed + seeds)] for m in methods}
    start = runs[methods[0]][0]["win_rate_before"]
    goal = target if target is not None else start + 0.05
    reference = {o.name: o.initial_rating if o.initial_rating is not None else cfg.algorithm.elo.initial_rating
                 for o in cfg.opponents}
    results = [method_result(m, rs, target=goal, reference=reference, selection=selection_of(cfg, m))
               for m, rs in runs.items()]
    return results, start, goal


def selection_of(cfg: RunConfig, method: str) -> SelectionSettings | None:
    """How ``method``'s runs draw opponents from Elo ratings (None: they do not)."""
    child = child_config(cfg, method, cfg.seed)
    if child.algorithm.name != "elo_evolve":
        return None
    elo = child.algorithm.elo
    if elo.temperature_schedule != "constant" and elo.temperature_end is not None:
        return None  # an annealed T: no one temperature to measure against
    return SelectionSettings(temperature=elo.temperature, selection=elo.selection, target_win_rate=elo.target_win_rate,
                             initial_policy=elo.initial_rating)


def noise_line(cfg: RunConfig) -> str:
    """The noise-to-signal comparison at the config's judge noise, on the runs' cached player answers."""
    from megatron_elo.analysis.noise import games_from_answer_cache, noise_to_signal
    from megatron_elo.data.source import load_prompt_sets

    train, held_out = load_prompt_sets(cfg)
    games = games_from_answer_cache(Path(cfg.output_dir) / "opponent_cache" / "answers.sqlite", [*train, *held_out])
    if not games:
        return "noise: no cached answers to measure on"
    r = noise_to_signal(games, noise=cfg.judge.noise)
    return (f"noise-to-signal at judge noise {r.noise}: pairwise {r.pairwise_nsr:.3f}, absolute {r.absolute_nsr:.3f} "
            f"(absolute/pairwise = {r.absolute_over_pairwise:.2f}; {r.items} answer pairs x {r.repeats} judgements)")


def _json_safe(value):
    """NaN -> None all through (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_and_log(cfg: RunConfig, results: list[MethodResult], table: str) -> Path:
    """compare.md / compare.json in output_dir, and an MLflow run "compare" holding them."""
    from megatron_elo.tracking import make_tracker

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps(_json_safe([dataclasses.asdict(r) for r in results]), indent=2))
    plots = plot_curves(out, results)
    tracker = make_tracker(cfg.tracking, rank=0, output_dir=cfg.output_dir, run_name="compare")
    tracker.log_metrics({f"final_win_rate/{r.method}": r.mean for r in results}, step=0)
    tracker.log_artifact(out / "compare.md")
    tracker.log_artifact(out / "compare.json")
    for plot in plots:
        tracker.log_artifact(plot)
    tracker.finish()
    return out / "compare.md"
