"""What a run reports, read from its records: per-step metrics, artifacts (tables, a ratings plot),
the HF export and the end-of-run summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from megatron_elo.config.loader import dump_yaml
from megatron_elo.config.schema import RunConfig
from megatron_elo.flow import POLICY, StepRecord
from megatron_elo.signals.outcomes import no_signal_rates
from megatron_elo.tracking import Tracker

_OUTCOME_LABELS = {"policy": "win", "tie": "tie", "opponent": "loss"}


def step_metrics(record: StepRecord, *, seconds: float) -> dict[str, float]:
    """The driver's metrics of one step that took ``seconds``: loss statistics of its optimizer steps,
    rewards, invalid verdicts, Elo ratings and selection probabilities, win / tie / loss rates and
    no-signal shares per opponent, throughput, seconds per phase (phases may overlap: ``time/step`` is
    the step's wall clock), and the stages' own statistics."""
    metrics: dict[str, float] = {}
    if record.train:
        last = record.train[-1]
        metrics.update({"loss": float(np.mean([s.loss for s in record.train])), **last.metrics,
                        "grad_norm": last.grad_norm, "lr": last.lr})
    signal, played = record.signal, record.played
    if signal is not None:
        rewards, valid = signal.rewards, signal.valid
        metrics["reward_mean"] = float(rewards[valid].mean()) if valid.any() else float("nan")
        metrics["invalid_verdicts"] = float((~valid).sum())
        metrics["no_signal_groups"], no_signal = no_signal_rates(rewards, valid, played.plan.opponents)
        metrics.update({f"no_signal_groups/{name}": rate for name, rate in no_signal.items()})
    if POLICY in record.ratings:
        metrics["elo/policy"] = record.ratings[POLICY]
    metrics["response_tokens"] = record.response_tokens
    metrics["tokens_per_s"] = record.response_tokens / max(seconds, 1e-9)
    metrics.update(record.extra_metrics)
    metrics.update({f"time/{k}": v for k, v in record.timings.items()})
    metrics["time/step"] = seconds
    probabilities = played.plan.probabilities if played is not None else {}
    for name, rating in record.ratings.items():
        if name == POLICY:
            continue
        metrics[f"elo/{name}"] = rating
        metrics[f"p_select/{name}"] = probabilities.get(name, 0.0)
        mine = [o for o in played.outcomes if o.opponent == name and o.valid] if played is not None else []
        for kind, label in _OUTCOME_LABELS.items():
            if mine:
                metrics[f"{label}_rate/{name}"] = sum(o.winner == kind for o in mine) / len(mine)
    return metrics


def step_trace(record: StepRecord) -> dict | None:
    """What ``compare`` reads of one step of a games recipe (None for a step without games): prompts per
    opponent (``"-"``: scored alone), the selection probabilities they were drawn from, the policy's mean
    reward (its score in pairwise games: the win probability against the chosen opponents) and the share
    of prompt groups without signal."""
    signal, played = record.signal, record.played
    if signal is None or played is None or len(signal.rewards) == 0:
        return None
    opponents = played.plan.opponents
    prompts: dict[str, int] = {}
    for name in opponents:
        prompts[name or "-"] = prompts.get(name or "-", 0) + 1
    no_signal, _ = no_signal_rates(signal.rewards, signal.valid, opponents)
    valid = signal.valid
    return {"step": record.step, "prompts": prompts, "p_select": dict(played.plan.probabilities),
            "reward_mean": float(signal.rewards[valid].mean()) if valid.any() else None, "no_signal": no_signal}


def write_artifacts(cfg: RunConfig, run_dir: Path, *, rated: list[str], elo_history: list[dict], evals: list[dict],
                    last: StepRecord | None, tracker: Tracker) -> None:
    """resolved_config.yaml, elo_history.csv + elo_ratings.png (``rated``: the players' names, columns
    of ``elo_history``; none when empty), sample_games.csv (the last step's first 64 games), evals.json, under
    <run_dir>/artifacts, logged to the tracker."""
    out = run_dir / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolved_config.yaml").write_text(dump_yaml(cfg))
    names = list(rated)
    if names:  # a method without Elo ratings (pairs_offline, sparta's reputations: its own report) has no plot
        with open(out / "elo_history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *names])
            writer.writeheader()
            writer.writerows(elo_history)
        plot_ratings(out / "elo_ratings.png", elo_history, names, title=f"{cfg.algorithm.name}: ratings over training")
    played = last.played if last is not None else None
    with open(out / "sample_games.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "reference", "policy_answer", "opponent", "opponent_answer", "verdict"])
        if played is not None:
            for game, verdict in list(zip(played.games, played.verdicts, strict=True))[:64]:
                writer.writerow([game.prompt.text, game.prompt.reference, game.policy.text, game.opponent_name,
                                 game.opponent.text if game.opponent else "", verdict.winner or verdict.score])
    (out / "evals.json").write_text(json.dumps(evals, indent=2))
    tracker.log_artifact(out)


def plot_ratings(path: Path, elo_history: list[dict], names: list[str], *, title: str) -> None:
    """Every player's Elo rating over the steps (the trained player's line thicker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in elo_history]
    for name in names:
        ax.plot(steps, [row[name] for row in elo_history], label=name, linewidth=2.5 if name == POLICY else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("Elo rating")
    ax.set_title(title)
    if names:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def export_final(cfg: RunConfig, run_dir: Path, tracker: Tracker) -> Path | None:
    """The newest checkpoint as an HF checkpoint under <run_dir>/export_hf/<step> (checkpoint.export_hf), logged;
    a several-player checkpoint's other players beside it (<step>-<name>). Returns the first player's."""
    from megatron_elo.models.convert import megatron_dir_to_hf
    from megatron_elo.trainer.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    if not cfg.checkpoint.export_hf or latest is None:
        return None
    others = json.loads((latest / "meta.json").read_text()).get("players", [])
    for player in [None, *others]:  # a tribe's further players: export_hf/<step>-<name>
        target = run_dir / "export_hf" / (latest.name if player is None else f"{latest.name}-{player}")
        if not target.exists():
            megatron_dir_to_hf(latest, target, player=player)
        tracker.log_artifact(target, "export_hf")
    return run_dir / "export_hf" / latest.name
