"""Experiment tracking: MLflow on rank 0, a no-op elsewhere or when ``tracking.backend: none``.

Metrics go out in batches (``log_batch``, at most 1000 per call), never one call per scalar; names
are sanitised to what MLflow accepts; a run that crashes is marked FAILED; a resumed run logs into
the same MLflow run (its id is kept in the checkpoint) and skips the points it logged before it was
stopped (a resume replays the steps after its checkpoint, bitwise alike: their points are there already).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from megatron_elo.config.schema import TrackingConfig

_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")
MAX_PARAM_VALUE = 6000


def sanitize_name(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space / and :; anything else becomes '_'."""
    return _BAD_CHARS.sub("_", name)[:250]


def default_tracking_uri(output_dir: str) -> str:
    """$MLFLOW_TRACKING_URI, else a local sqlite store in ``output_dir`` (MLflow 3's embedded default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def prepare_store(config: TrackingConfig, *, output_dir: str) -> None:
    """Create the MLflow store's tables and the experiment once (``compare --jobs``: children starting
    together would race to create them on the sqlite store, and one would fail)."""
    if config.backend != "mlflow":
        return
    import mlflow

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.tracking_uri or default_tracking_uri(output_dir))
    mlflow.set_experiment(config.experiment)


class Tracker:
    """The interface the loop logs through."""

    run_id: str | None = None
    location: str = ""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker(Tracker):
    """Tracking off, or a non-zero rank."""


class MlflowTracker(Tracker):
    """One MLflow run; ``run_id`` resumes an existing run."""

    def __init__(self, config: TrackingConfig, *, output_dir: str, run_name: str, run_id: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.uri = config.tracking_uri or default_tracking_uri(output_dir)
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.set_experiment(config.experiment)
        self._mlflow = mlflow
        self.client = MlflowClient(self.uri)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                               experiment_id=experiment.experiment_id, log_system_metrics=config.system_metrics)
        self.run_id = run.info.run_id
        self.location = f"{self.uri} (experiment {config.experiment!r}, run {self.run_id})"
        self.logged_through = self._last_logged_steps() if run_id else {}  # {metric: last step it has}

    def _last_logged_steps(self) -> dict[str, int]:
        """{metric key: the highest step this run holds for it} (a resumed run's existing points)."""
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(sanitize_name(k), str(v)[:MAX_PARAM_VALUE]) for k, v in params.items() if sanitize_name(k) not in existing]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(sanitize_name(k), float(v), now, step) for k, v in metrics.items()
                 if v == v and step > self.logged_through.get(sanitize_name(k), -1)]  # NaN and replayed points dropped
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


def make_tracker(config: TrackingConfig, *, rank: int, output_dir: str, run_name: str, run_id: str | None = None) -> Tracker:
    """MLflow on rank 0 when enabled, else a no-op."""
    if rank != 0 or config.backend == "none":
        return NullTracker()
    return MlflowTracker(config, output_dir=output_dir, run_name=run_name, run_id=run_id)
