"""The megatron-elo command: help, dry run, exit codes, the resolved config written with a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_elo.cli import EXIT_BAD_CONFIG, EXIT_NOT_BUILT, main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")


def test_console_script_train_help_lists_the_config_groups():
    exe = shutil.which("megatron-elo", path=str(Path(sys.executable).parent)) or shutil.which("megatron-elo")
    assert exe, "the megatron-elo console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, check=True).stdout
    for group in ("cluster:", "parallel:", "model:", "trainer:", "rollout:", "opponents:", "judge:", "algorithm:",
                  "data:", "eval:", "tracking:", "checkpoint:"):
        assert group in out
    assert "trainer.lr  [float = 1e-06]  Peak learning rate." in out
    assert "--dry-run" in out


@pytest.mark.parametrize("command", ["train", "eval", "bench", "convert", "compare"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: megatron-elo" in capsys.readouterr().out


def test_dry_run_prints_config_and_layout_and_writes_nothing(tmp_path, capsys):
    assert main(["train", TINY, f"output_dir={tmp_path}", "trainer.steps=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out
    assert "trainer: TP=1 PP=1 DP=1 on 1 cpu rank(s)" in out
    assert "engines (vLLM)" in out and "configuration is valid" in out
    assert list(tmp_path.iterdir()) == []


def test_overrides_may_follow_options(tmp_path, capsys):
    assert main(["train", TINY, "--dry-run", f"output_dir={tmp_path}", "trainer.steps=9"]) == 0
    assert "steps: 9" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", TINY, "--dry-run", "--no-such-option"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_bad_config_exits_2_with_the_field_named(capsys):
    assert main(["train", TINY, "trainer.lrr=1", "--dry-run"]) == EXIT_BAD_CONFIG
    assert "trainer.lrr: unknown key; did you mean trainer.lr?" in capsys.readouterr().err


def test_no_check_paths_is_only_for_dry_runs(capsys):
    assert main(["train", TINY, "--no-check-paths"]) == EXIT_BAD_CONFIG
    assert "only allowed with --dry-run" in capsys.readouterr().err


def test_what_the_recipes_cannot_run_yet_exits_3_with_the_reason(tmp_path, capsys, monkeypatch):
    from megatron_elo.recipes import NotSupportedYet
    from megatron_elo.runner import runner

    def not_yet(self):
        raise NotSupportedYet("absolute (point-wise) scoring with an LLM judge is not built yet")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(runner.Runner, "run", not_yet)
    code = main(["train", TINY, f"output_dir={tmp_path}"])
    assert code == EXIT_NOT_BUILT
    assert "point-wise) scoring with an LLM judge is not built yet" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "megatron_elo.cli", "train", TINY, "--dry-run"],
                            capture_output=True, text=True, env={**os.environ, "WORLD_SIZE": "1"})
    assert result.returncode == 0, result.stderr
