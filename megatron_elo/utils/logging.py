"""One logger setup for every entry point: rank-aware, rich on a terminal, plain elsewhere.

    log = setup_logging(rank=int(os.environ.get("RANK", 0)))   # once, in the entry script
    log.info("hello")                                           # rank 0 prints; others stay quiet
    with progress_bar(total=steps, description="train", enabled=rank == 0) as bar: ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

LOGGER_NAME = "megatron_elo"


class _RankFilter(logging.Filter):
    """Let records through on the chosen ranks only (warnings and errors from every rank)."""

    def __init__(self, rank: int, all_ranks: bool):
        super().__init__()
        self.rank, self.all_ranks = rank, all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.all_ranks or self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(*, rank: int = 0, level: str | int = "INFO", all_ranks: bool = False) -> logging.Logger:
    """Configure and return the ``megatron_elo`` logger.

    rank: this process's global rank (from the launcher's RANK); non-zero ranks print only
    warnings and errors unless ``all_ranks``. Idempotent: a second call replaces the handler.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("[rank %(rank)s] %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"))
    handler.addFilter(_RankFilter(rank, all_ranks))
    logger.addHandler(handler)
    return logger


def send_engine_logs_to(path: str | Path) -> Path:
    """vLLM's log lines from the engines in this process go to ``path`` (appended), not the console:
    per weight sync alone it logs a reload timing, a prefix-cache reset and two "Failed to load
    weights" warnings (harmless: see ``RolloutEngine.load_weights``). Its errors still reach the
    console. Call before vLLM is imported (its own logging set-up is turned off); served engines keep
    vLLM's own logging, into their log files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    engine_logger = logging.getLogger("vllm")
    for handler in list(engine_logger.handlers):
        engine_logger.removeHandler(handler)
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    engine_logger.addHandler(to_file)
    engine_logger.addHandler(errors)
    engine_logger.setLevel(logging.INFO)
    engine_logger.propagate = False
    return path


def get_logger(name: str) -> logging.Logger:
    """A child of the project logger, e.g. ``get_logger(__name__)``."""
    return logging.getLogger(name if name.startswith(LOGGER_NAME) else f"{LOGGER_NAME}.{name}")


@contextlib.contextmanager
def progress_bar(*, total: int, description: str, enabled: bool = True) -> Iterator:
    """A rich progress bar (a no-op object when not ``enabled``, e.g. on non-zero ranks).

    Yields an object with ``advance(n=1)`` and ``update(**fields)``.
    """
    if not enabled:
        yield _NoProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")
        yield _RichProgress(bar, task)


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **fields: object) -> None:
        pass


class _RichProgress:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

    def update(self, **fields: object) -> None:
        status = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.bar.update(self.task, status=status)
