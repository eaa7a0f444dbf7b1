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
The table (final held-out win rate mean and std, steps to reach the target win rate) is printed and
written to ``<output_dir>/compare.md`` and ``compare.json``, and logged to MLflow as run "compare".
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods`` "a,b,c" -> names, each a GRPO recipe or a pair loss (ValueError naming a stranger)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    known = [*METHODS, *RECIPE_METHODS, *PAIR_METHODS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or text!r}; choose from {known}")
    return names


def method_overrides(cfg: RunConfig, method: str) -> list[str]:
    """The dotted overrides that make ``cfg`` train ``method``."""
    if method in METHODS or method in RECIPE_METHODS:
        return [f"algorithm.name={method}"]
    knobs = {} if cfg.algorithm.pairs.loss == method else PAIR_METHODS[method]
    return ["algorithm.name=pairs_online", f"algorithm.pairs.loss={method}",
            *(f"algorithm.pairs.{key}={value}" for key, value in knobs.items())]


@dataclass(frozen=True, kw_only=True)
class MethodResult:
    """One method over its seeds."""

    method: str
    final: list[float]  # final held-out win rate per seed
    steps_to_target: list[int | None]  # first eval step reaching the target, per seed (None: never)

    @property
    def mean(self) -> float:
        return statistics.mean(self.final)

    @property
    def std(self) -> float:
        return statistics.stdev(self.final) if len(self.final) > 1 else 0.0


def steps_to_target(evals: list[dict], target: float) -> int | None:
    """The first evaluated step whose win rate reaches ``target`` (None if none does)."""
    return next((e["step"] for e in evals if e["win_rate"] >= target), None)


def child_config(cfg: RunConfig, method: str, seed: int) -> RunConfig:
    """The config the (method, seed) child run trains with."""
    if method in METHODS or method in RECIPE_METHODS:
        algorithm = dataclasses.replace(cfg.algorithm, name=method)
    else:
        knobs = {} if cfg.algorithm.pairs.loss == method else PAIR_METHODS[method]
        algorithm = dataclasses.replace(cfg.algorithm, name="pairs_online",
                                        pairs=dataclasses.replace(cfg.algorithm.pairs, loss=method, **knobs))
    return dataclasses.replace(cfg, seed=seed, run_name=f"compare_{method}_s{seed}", algorithm=algorithm)


def config_differences(expected: RunConfig, resolved_yaml: str) -> list[str]:
    """Dotted keys whose value in a run's ``resolved_config.yaml`` differs from ``expected``'s."""
    import yaml

    want, have = flatten(yaml.safe_load(dump_yaml(expected))), flatten(yaml.safe_load(resolved_yaml))
    return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))


def run_one(config: str, overrides: list[str], method: str, seed: int, cfg: RunConfig) -> dict:
    """Train one (method, seed) in a child process, or reuse its finished summary when it was trained
    with the same resolved config (ValueError naming the keys otherwise)."""
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
        command = [sys.executable, "-m", "megatron_elo.cli", "train", config, *overrides, *method_overrides(cfg, method),
                   f"seed={seed}", f"run_name={run_name}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not summary_file.is_file():
            raise RuntimeError(f"{run_name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(summary_file.read_text())


def compare(cfg: RunConfig, config: str, overrides: list[str], *, seeds: int, target: float | None,
            methods: tuple[str, ...] = METHODS) -> tuple[list[MethodResult], float, float]:
    """Run every method for ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...); returns (results, the
    starting win rate, the target used: ``target`` or start + 0.05)."""
    summaries: dict[str, list[dict]] = {m: [] for m in methods}
    with progress_bar(total=len(methods) * seeds, description="compare") as bar:
        for seed in range(cfg.seed, cfg.seed + seeds):
            for method in methods:
                summaries[method].append(run_one(config, overrides, method, seed, cfg))
                bar.advance()
    start = summaries[methods[0]][0]["win_rate_before"]
    goal = target if target is not None else start + 0.05
    results = [MethodResult(method=m, final=[s["win_rate_after"] for s in runs],
                            steps_to_target=[steps_to_target(s["evals"], goal) for s in runs]) for m, runs in summaries.items()]
    return results, start, goal


def format_table(results: list[MethodResult], *, start: float, target: float) -> str:
    """A markdown table of the comparison."""
    lines = [f"start win rate {start:.3f}; target {target:.3f}", "",
             "| method | final win rate, mean (std) | per seed | steps to target, per seed |", "|---|---|---|---|"]
    for r in results:
        reach = ", ".join("-" if s is None else str(s) for s in r.steps_to_target)
        lines.append(f"| {r.method} | {r.mean:.3f} ({r.std:.3f}) | {', '.join(f'{v:.3f}' for v in r.final)} | {reach} |")
    return "\n".join(lines)


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


def write_and_log(cfg: RunConfig, results: list[MethodResult], table: str) -> Path:
    """compare.md / compare.json in output_dir, and an MLflow run "compare" holding them."""
    from megatron_elo.tracking import make_tracker

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    tracker = make_tracker(cfg.tracking, rank=0, output_dir=cfg.output_dir, run_name="compare")
    tracker.log_metrics({f"final_win_rate/{r.method}": r.mean for r in results}, step=0)
    tracker.log_artifact(out / "compare.md")
    tracker.log_artifact(out / "compare.json")
    tracker.finish()
    return out / "compare.md"
