"""Rank-aware logging: rank 0 prints info, other ranks only warnings and errors."""

from __future__ import annotations

import logging

from megatron_elo.utils.logging import get_logger, progress_bar, setup_logging


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _capture(rank: int, all_ranks: bool = False) -> list[str]:
    logger = setup_logging(rank=rank, all_ranks=all_ranks)
    collector = _Collect()
    collector.addFilter(logger.handlers[0].filters[0])
    logger.addHandler(collector)
    child = get_logger("trainer")
    child.info("info line")
    child.warning("warning line")
    return collector.messages


def test_rank0_prints_info_other_ranks_only_warnings():
    assert _capture(0) == ["info line", "warning line"]
    assert _capture(3) == ["warning line"]
    assert _capture(3, all_ranks=True) == ["info line", "warning line"]


def test_child_loggers_hang_under_the_project_logger():
    assert get_logger("x").name == "megatron_elo.x"
    assert get_logger("megatron_elo.y").name == "megatron_elo.y"


def test_disabled_progress_bar_is_a_no_op():
    with progress_bar(total=3, description="x", enabled=False) as bar:
        bar.advance()
        bar.update(loss=1.0)


def test_engine_log_lines_go_to_their_file_and_errors_still_reach_the_console(tmp_path, capfd, monkeypatch):
    """The per-sync vLLM chatter (here: the "Failed to load weights" warning) stays out of the console."""
    import logging

    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "1")  # restored afterwards (the call sets it to 0)

    from megatron_elo.utils.logging import send_engine_logs_to

    path = send_engine_logs_to(tmp_path / "engine_logs" / "in_process_rank0.log")
    engine = logging.getLogger("vllm.model_executor.model_loader")
    engine.info("Reloading and processing weights took 0.02 seconds")
    engine.warning("ParallelLMHead: Failed to load weights")
    engine.error("out of KV cache blocks")
    printed = capfd.readouterr()
    assert "Failed to load weights" not in printed.out + printed.err and "Reloading" not in printed.out + printed.err
    assert "out of KV cache blocks" in printed.err
    written = path.read_text()
    assert "Reloading and processing weights" in written and "Failed to load weights" in written
    for handler in list(logging.getLogger("vllm").handlers):  # leave the process as it was
        logging.getLogger("vllm").removeHandler(handler)
        handler.close()
    logging.getLogger("vllm").propagate = True
