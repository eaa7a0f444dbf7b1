"""Launch scripts parse, and build the right torchrun / srun command lines (fake SLURM, fake torchrun)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "launch" / "slurm.sbatch"
TORCHRUN = ROOT / "launch" / "torchrun.sh"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH dir whose srun/torchrun record their argv (one per line) and env into files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = 'printf "%s\\n" "$@" > "$RECORD_DIR/$(basename "$0").args"; env > "$RECORD_DIR/$(basename "$0").env"\n'
    # srun records per program (srun-torchrun.*, srun-bash.*); it runs the engine nodes' bash as node gpu-node02,
    # and the trainer's step waits for that (the script stops the servers when training ends)
    _fake(bin_dir, "srun", """
args=("$@"); i=0; while [[ "${args[$i]}" == --* ]]; do i=$((i + 1)); done
name=$(basename "${args[$i]}")
printf "%s\\n" "$@" > "$RECORD_DIR/srun-$name.args"; env > "$RECORD_DIR/srun-$name.env"
if [[ "$name" == bash ]]; then SLURMD_NODENAME=gpu-node02 exec "${args[@]:$i}"; fi
for _ in $(seq 50); do [[ -z "$WAIT_FOR_SERVE" || -e "$RECORD_DIR/python.args" ]] && break; sleep 0.1; done
""")
    _fake(bin_dir, "torchrun", record)
    _fake(bin_dir, "python", record)
    _fake(bin_dir, "scontrol", '[[ "$1 $2" == "show hostnames" ]] && printf "gpu-node01\\ngpu-node02\\n"\n')
    _fake(bin_dir, "nvidia-smi", 'echo "GPU 0: H100"; echo "GPU 1: H100"; echo "GPU 2: H100"\n')
    return bin_dir


def _run(script: Path, args: list[str], fake_bin: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "RECORD_DIR": str(tmp_path), "HOME": str(tmp_path), **env}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full_env, cwd=tmp_path)


@pytest.mark.parametrize("script", [SLURM, TORCHRUN])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_two_nodes_one_trainer_node_in_a_container(fake_bin, tmp_path):
    result = _run(SLURM, ["configs/qwen2.5-7b_elo_evolve.yaml", "trainer.lr=2e-6"], fake_bin, tmp_path,
                  SLURM_JOB_NODELIST="gpu-node[01-02]", SLURM_NNODES="2", SLURM_JOB_ID="4242",
                  GPUS_PER_NODE="8", TRAINER_NODES="1", CONTAINER_IMAGE="megatron-elo:latest",
                  CONTAINER_MOUNTS="/models:/models", MLFLOW_TRACKING_URI="http://mlflow:5000", WAIT_FOR_SERVE="1")
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "srun-torchrun.args").read_text().splitlines()
    assert argv == [
        "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--nodelist=gpu-node01", "--kill-on-bad-exit=1",
        "--container-image=megatron-elo:latest", f"--container-workdir={tmp_path}", "--container-mounts=/models:/models",
        "torchrun", "--nnodes=1", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-node01:29500",
        "--rdzv-id=4242", "-m", "megatron_elo.cli", "train", "configs/qwen2.5-7b_elo_evolve.yaml", "trainer.lr=2e-6",
    ]
    env = dict(line.split("=", 1) for line in (tmp_path / "srun-torchrun.env").read_text().splitlines() if "=" in line)
    assert env["MEGATRON_ELO_ENGINE_HOSTS"] == "gpu-node02"
    assert env["MASTER_ADDR"] == "gpu-node01" and env["MASTER_PORT"] == "29500"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    # the engine node serves its dedicated engines: node index 1 (after the one trainer node)
    serve_step = (tmp_path / "srun-bash.args").read_text().splitlines()
    assert serve_step[:4] == ["--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--nodelist=gpu-node02"]
    assert (tmp_path / "python.args").read_text().splitlines() == [
        "-m", "megatron_elo.cli", "serve", "configs/qwen2.5-7b_elo_evolve.yaml", "trainer.lr=2e-6", "--node", "1"]


def test_slurm_all_nodes_train_on_bare_metal(fake_bin, tmp_path):
    result = _run(SLURM, ["configs/x.yaml"], fake_bin, tmp_path, SLURM_JOB_NODELIST="gpu-node[01-02]",
                  SLURM_NNODES="2", SLURM_JOB_ID="7", SLURM_GPUS_ON_NODE="4", MASTER_PORT="6000")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "srun-bash.args").exists()  # no engine nodes: nothing served
    argv = (tmp_path / "srun-torchrun.args").read_text().splitlines()
    assert argv[:5] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--nodelist=gpu-node01,gpu-node02",
                        "--kill-on-bad-exit=1"]
    assert "--nnodes=2" in argv and "--nproc-per-node=4" in argv and "--rdzv-endpoint=gpu-node01:6000" in argv
    assert not any(a.startswith("--container") for a in argv)


def test_slurm_refuses_bad_input(fake_bin, tmp_path):
    assert _run(SLURM, [], fake_bin, tmp_path, SLURM_JOB_NODELIST="n[1-2]").returncode == 2
    outside = _run(SLURM, ["c.yaml"], fake_bin, tmp_path)
    assert outside.returncode != 0 and "SLURM_JOB_NODELIST" in outside.stderr
    too_many = _run(SLURM, ["c.yaml"], fake_bin, tmp_path, SLURM_JOB_NODELIST="n[1-2]", SLURM_NNODES="2", TRAINER_NODES="3")
    assert too_many.returncode == 2 and "TRAINER_NODES=3" in too_many.stderr


def test_torchrun_one_node_counts_gpus(fake_bin, tmp_path):
    result = _run(TORCHRUN, ["configs/tiny_cpu.yaml", "parallel.dp=3", "--dry-run"], fake_bin, tmp_path)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "torchrun.args").read_text().splitlines()
    assert argv == ["--standalone", "--nnodes=1", "--nproc-per-node=3", "-m", "megatron_elo.cli", "train",
                    "configs/tiny_cpu.yaml", "parallel.dp=3", "--dry-run"]
    explicit = _run(TORCHRUN, ["c.yaml"], fake_bin, tmp_path, NPROC_PER_NODE="2")
    assert explicit.returncode == 0
    assert "--nproc-per-node=2" in (tmp_path / "torchrun.args").read_text().splitlines()
