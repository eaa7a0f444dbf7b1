"""Golden results: what the tiny demo's three methods and the 2-rank loop compute, recorded so that a
restructuring can be checked number for number.

    python tests/golden/golden.py record            # runs everything, writes tests/golden/results.json
    python tests/golden/golden.py check             # runs everything again, compares exactly, exit 1 on a difference
    python tests/golden/golden.py check --only point_s1234   # one entry

Only the command line is used (``megatron-elo train``, under torchrun for 2 ranks), so the same script
records the code before a change and checks the code after it. Every run starts in a fresh scratch
directory (``--work``, default a temporary one) with the demo's tiny players made there; nothing is read
from the checkout's ``runs/``.

``results.json`` is the recording of b684bdc, against which issue #15's restructuring was checked
identical. Issue #21 (d14e0db) then changed what the demo computes on purpose (disjoint held-out /
validation splits and the players' SFT on the training split, per-request sample seeds, selection
T = 100, trimmed micro-batches), so ``check`` reports differences until ``record`` is run on the new
code (not done yet: about 15 minutes on an idle 2-core machine).

Runs (about 15 minutes on 2 CPU cores):
- ``<method>_s<seed>``: configs/tiny_cpu.yaml for 60 steps, each method (point, static_pairwise,
  elo_evolve) at seeds 1234 and 1235, evaluated at steps 0, 50 and 60;
- ``two_rank_reference``: elo_evolve for 20 steps (eval every 10) in one process, and ``two_rank_dp2`` /
  ``_tp2`` / ``_pp2``: the same on 2 ranks (torchrun, OMP_NUM_THREADS=1), reading the reference's opponent
  answers (so no opponent server starts).

What is compared, exactly: the summary (win rates, exact-answer shares, Elo ratings, every evaluation), the
per-step MLflow metrics that are not timings (loss, pg_loss, grad_norm, reward_mean, every Elo rating and
selection probability, win rates, no-signal shares) and the SHA-256 of the exported final weights. A metric
the recording lacks (instrumentation added since) is listed, not compared; a recorded one missing fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
RESULTS = Path(__file__).resolve().parent / "results.json"
SUMMARY_KEYS = ("finished", "step", "win_rate_before", "win_rate_after", "ci95_after", "exact_before", "exact_after", "elo",
                "evals")
UNTIMED = ("time/", "tokens_per_s", "system/")
TWO_RANK = {"dp2": ["parallel.dp=2", "rollout.engine.dp=2"], "tp2": ["parallel.tp=2", "rollout.engine.tp=2"],
            "pp2": ["parallel.pp=2", "rollout.engine.dp=2"]}
TWO_RANK_BASE = ["algorithm.name=elo_evolve", "seed=1234", "trainer.steps=20", "eval.every_steps=10", "checkpoint.every_steps=10"]


def runs() -> dict[str, tuple[int, list[str], str | None]]:
    """{entry name: (processes, overrides, entry whose opponent cache it starts from)} in run order."""
    table: dict[str, tuple[int, list[str], str | None]] = {}
    for method in ("point", "static_pairwise", "elo_evolve"):
        for seed in (1234, 1235):
            table[f"{method}_s{seed}"] = (1, [f"algorithm.name={method}", f"seed={seed}", "trainer.steps=60"], None)
    table["two_rank_reference"] = (1, TWO_RANK_BASE, None)
    for name, layout in TWO_RANK.items():
        table[f"two_rank_{name}"] = (2, [*TWO_RANK_BASE, *layout, "cluster.devices_per_node=2"], "two_rank_reference")
    return table


def train(work: Path, name: str, processes: int, overrides: list[str], cache_from: str | None) -> Path:
    """One ``megatron-elo train`` of the demo config in ``work`` (players under work/runs/tiny_players);
    returns its run directory."""
    out = work / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if cache_from is not None:
        shutil.copytree(work / "out" / cache_from / "opponent_cache", out / "opponent_cache")
    args = [str(CONFIG), f"output_dir={out}", f"run_name={name}", *overrides]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    if processes == 1:
        command = [sys.executable, "-m", "megatron_elo.cli", "train", *args]
    else:
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   f"--nproc-per-node={processes}", "-m", "megatron_elo.cli", "train", *args]
    log = out / "console.log"
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}; see {log}")
    return out / name


def metric_histories(run_dir: Path) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of the run's MLflow run, timings left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    experiments = client.search_experiments()
    found = client.search_runs([e.experiment_id for e in experiments])
    if len(found) != 1:
        raise SystemExit(f"{run_dir}: expected one MLflow run, found {len(found)}")
    run_id = found[0].info.run_id
    histories = {}
    for key in sorted(found[0].data.metrics):
        if key.startswith(UNTIMED):
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        histories[key] = [[step, value] for step, value in history]
    return histories


def record_of(run_dir: Path) -> dict:
    """What is compared of one finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    weights = Path(summary["export"]) / "model.safetensors"
    return {"summary": {k: summary[k] for k in SUMMARY_KEYS}, "metrics": metric_histories(run_dir),
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def dump(results: dict) -> str:
    """The results as JSON with one line per summary and per metric history (floats exact: repr)."""
    entries = []
    for name in sorted(results):
        record = results[name]
        metrics = ",\n".join(f"   {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(record["metrics"].items()))
        entries.append(f" {json.dumps(name)}: {{\n  \"summary\": {json.dumps(record['summary'], sort_keys=True)},\n"
                       f"  \"weights_sha256\": {json.dumps(record['weights_sha256'])},\n  \"metrics\": {{\n{metrics}\n  }}\n }}")
    return "{\n" + ",\n".join(entries) + "\n}\n"


def differences(expected: dict, got: dict, prefix: str = "") -> list[str]:
    """Dotted paths where ``got`` differs from ``expected`` (exact comparison, floats included)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        lines = []
        for key in sorted(expected.keys() | got.keys()):
            if key not in got or key not in expected:
                lines.append(f"{prefix}{key}: {'missing' if key not in got else 'unexpected'}")
            else:
                lines += differences(expected[key], got[key], f"{prefix}{key}.")
        return lines
    if expected != got:
        return [f"{prefix.rstrip('.')}: expected {str(expected)[:160]}, got {str(got)[:160]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("--only", nargs="*", help="entries to run (their cache sources run too)")
    parser.add_argument("--work", help="scratch directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    table = runs()
    wanted = args.only or list(table)
    needed = set(wanted) | {table[w][2] for w in wanted if table[w][2]}
    work = Path(args.work or tempfile.mkdtemp(prefix="megatron-elo-golden-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch directory: {work}", flush=True)
    got = {}
    for name, (processes, overrides, cache_from) in table.items():
        if name in needed:
            print(f"running {name} ...", flush=True)
            got[name] = record_of(train(work, name, processes, overrides, cache_from))
    if args.mode == "record":
        previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.write_text(dump({**previous, **{k: got[k] for k in wanted}}))
        print(f"wrote {RESULTS}")
        return 0
    expected = json.loads(RESULTS.read_text())
    failed = False
    for name in wanted:
        added = sorted(got[name]["metrics"].keys() - expected[name]["metrics"].keys())
        compared = {**got[name], "metrics": {k: v for k, v in got[name]["metrics"].items() if k not in added}}
        lines = differences(expected[name], compared)
        print(f"{name}: {'identical' if not lines else f'{len(lines)} difference(s)'}"
              + (f" (metrics added since the recording, not compared: {', '.join(added)})" if added else ""))
        for line in lines[:20]:
            print(f"  {line}")
        failed |= bool(lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
