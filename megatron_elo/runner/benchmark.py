"""``megatron-elo bench loop``: seconds per training step with and without ``rollout.overlap_judging``,
with a served tiny LLM judge and served opponents (their own engines, as at scale).

    megatron-elo bench loop                                # configs/tiny_cpu.yaml, 8 steps per setting
    megatron-elo bench loop --steps 12 --judge-tokens 64 --out runs/bench_loop

Each setting is one ``megatron-elo train`` process of the config with: a tiny LLM judge made locally
(byte tokenizer, 1 layer, random weights; text verdicts of up to ``--judge-tokens`` tokens, both
orders) served by a vLLM server the run starts, every opponent on a server too, no periodic
evaluation, no checkpoints. It reads each step's wall clock (``time/step``) and phases from the run's
MLflow store and reports the mean over the steps after ``--skip`` (the first ones start the servers).
The judge's random weights give mostly invalid verdicts: the timings are what is measured, not learning.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_elo.config.loader import load_config

PHASES = ("step", "generate", "opponent", "judge", "train", "sync")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench loop``'s options."""
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="training steps per setting")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the means (server start-up)")
    parser.add_argument("--judge-tokens", type=int, default=48, help="judge.max_new_tokens (its verdict length cap)")
    parser.add_argument("--out", default=None, help="work directory (default: a new temporary one)")


def _make_judge(directory: Path) -> Path:
    from megatron_elo.config.schema import ArchConfig
    from megatron_elo.models.tiny import make_tiny_hf_model, make_tiny_tokenizer

    if not (directory / "config.json").is_file():
        arch = ArchConfig(family="qwen2", num_layers=1, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                          num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=1024, tie_word_embeddings=True)
        make_tiny_hf_model(arch, directory, seed=5, init_std=0.3)
        make_tiny_tokenizer(directory)
    return directory


def _overrides(args: argparse.Namespace, judge: Path, out: Path, overlap: bool) -> list[str]:
    cfg = load_config(args.config)
    served = "{launch: server, placement: colocated, gpu_memory_utilization: 0.2, kv_cache_gib: 0.25, max_model_len: %d}"
    overrides = [f"output_dir={out}", "run_name=bench", f"trainer.steps={args.steps}", "eval.every_steps=0",
                 "eval.num_prompts=8", "checkpoint.every_steps=0", "checkpoint.export_hf=false", "tracking.backend=mlflow",
                 f"rollout.overlap_judging={str(overlap).lower()}", "judge.kind=llm", f"judge.model={{path: {judge}, dtype: fp32}}",
                 f"judge.engine={served % 1024}", f"judge.max_new_tokens={args.judge_tokens}", "judge.logprob_verdicts=false"]
    return overrides + [f"opponents.{o.name}.engine={served % o.engine.max_model_len}" for o in cfg.opponents]


def _phase_means(out: Path, skip: int) -> dict[str, float]:
    """Mean seconds of each phase over the steps after ``skip``, from the run's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    means = {}
    for phase in PHASES:
        history = client.get_metric_history(run.info.run_id, f"time/{phase}")
        values = [m.value for m in history if m.step > skip]
        means[phase] = statistics.mean(values) if values else float("nan")
    return means


def run(args: argparse.Namespace) -> int:
    """Train once per setting, then print the table."""
    import torch

    work = Path(args.out or tempfile.mkdtemp(prefix="megatron-elo-bench-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    judge = _make_judge(work / "judge")
    results = {}
    for overlap in (False, True):
        out = work / ("overlap" if overlap else "in_order")
        command = [sys.executable, "-m", "megatron_elo.cli", "train", args.config, *_overrides(args, judge, out, overlap)]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
        print(f"overlap_judging={overlap}: training {args.steps} steps in {out} ...", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "console.log", "w") as log:
            done = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            print(f"the run failed (exit {done.returncode}); see {out / 'console.log'}", file=sys.stderr)
            return 1
        results[overlap] = _phase_means(out, args.skip)
    cfg = load_config(args.config)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.n_per_prompt} samples per step, "
          f"judge: tiny LLM (1 layer, 128 wide) served, text verdicts <= {args.judge_tokens} tokens, both orders; "
          f"opponents served; mean of steps {args.skip + 1}..{args.steps}\n")
    print("| overlap_judging | s / step | generate | opponent | judge | train | sync |")
    print("|---|---|---|---|---|---|---|")
    for overlap, means in results.items():
        print(f"| {str(overlap).lower()} | " + " | ".join(f"{means[p]:.2f}" for p in PHASES) + " |")
    ratio = results[True]["step"] / results[False]["step"]
    print(f"\noverlapped / in order: {ratio:.2f} x the step time (judging share in order: "
          f"{(results[False]['opponent'] + results[False]['judge']) / results[False]['step']:.0%})")
    return 0
