"""Where opponents and the judge run: in-process or as servers (launch=auto|in_process|server), the
dedicated nodes' servers started by `megatron-elo serve --node N` and found by the run through
MEGATRON_ELO_ENGINE_HOSTS, and the start-up checks that go with them. vLLM itself is replaced by the
fake OpenAI server here (tests/test_engine.py runs a real one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from megatron_elo.config.loader import ConfigError, load_config
from megatron_elo.config.validate import validate
from megatron_elo.parallel.spawn import free_port
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.rollout.launch import (
    ENGINE_HOSTS_ENV,
    dedicated_url,
    launches_server,
    node_engines,
    open_engine,
    serve_node,
)
from tests.test_config import QWEN7B, TINY, problems_of

FAKE_SERVER = str(Path(__file__).parent / "fake_openai_server.py")


def qwen(*overrides: str):
    return validate(load_config(QWEN7B, list(overrides)), check_paths=False)


def problems(*overrides: str, config=QWEN7B, world_size=None) -> str:
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(config, list(overrides)), world_size=world_size, check_paths=False)
    return problems_of(excinfo)


def test_auto_launch_is_in_process_alone_and_a_server_in_a_world():
    engine = qwen().opponents[0].engine.__class__  # EngineConfig
    assert not launches_server(engine(), world_size=1)
    assert launches_server(engine(), world_size=2)
    assert launches_server(engine(launch="server"), world_size=1)
    assert launches_server(engine(placement="dedicated", port=1), world_size=1)
    assert not launches_server(engine(launch="in_process"), world_size=1)


def test_start_up_checks_name_the_engine_and_the_fix():
    text = problems("opponents.qwen3-8b.engine.port=null", "judge.engine.port=8101", "opponents.qwen2.5-32b.engine.launch=in_process")
    assert "opponents.2.engine: a dedicated engine needs opponents.2.engine.port" in text
    assert "judge.engine: port 8101 on node 1 is already used by opponents.0.engine" in text
    assert "opponents.0.engine: placement=dedicated runs as a server on its own node" in text
    assert "an in-process vLLM engine hangs inside a multi-rank world (8 trainer ranks)" in text
    assert "rollout.engine: the policy's engine is colocated with the trainer" in problems("rollout.engine.launch=server")
    ranges = problems("judge.engine.retries=-1", "judge.engine.port=80", "opponents.0.engine.server_url=node2:8000",
                      "opponents.1.engine.request_timeout_s=0")
    assert "judge.engine.retries: must be >= 0, got -1" in ranges and "judge.engine.port: must be in 1024..65535, got 80" in ranges
    assert "opponents.0.engine.server_url: must start with http:// or https://, got 'node2:8000'" in ranges
    assert "opponents.1.engine.startup_timeout_s / request_timeout_s: must be > 0 seconds" in ranges
    two = problems("cluster.devices_per_node=2", "parallel.dp=2", "rollout.engine.dp=2",
                   "opponents.weak.engine.launch=in_process", config=TINY, world_size=2)
    assert "opponents.0.engine.launch=in_process: an in-process vLLM engine hangs inside a multi-rank world" in two


def test_dedicated_url_comes_from_the_engine_hosts():
    cfg = qwen()
    judge = cfg.judge.engine
    assert dedicated_url(judge, cfg.cluster, hosts="gpu-node02") == "http://gpu-node02:8104"
    with pytest.raises(ValueError, match=f"set {ENGINE_HOSTS_ENV} to the non-trainer nodes' hosts"):
        dedicated_url(judge, cfg.cluster, hosts="")


def test_serve_starts_a_nodes_servers_and_the_run_finds_them(monkeypatch, tmp_path):
    """`serve --node 1` starts node 1's four engines (fake servers on free ports); the run, given the
    node's host, connects to each and generates through it; a dead server is reported."""
    ports = [free_port() for _ in range(4)]
    cfg = qwen(*(f"opponents.{i}.engine.port={p}" for i, p in enumerate(ports[:3])), f"judge.engine.port={ports[3]}")
    assert [name for name, _, _ in node_engines(cfg, 1)] == ["qwen2.5-32b", "qwen2.5-14b", "qwen3-8b", "judge"]
    assert node_engines(cfg, 0) == []
    monkeypatch.setattr("megatron_elo.rollout.served.vllm_server_command",
                        lambda model_dir, engine, *, port, **kwargs: [sys.executable, FAKE_SERVER, str(port)])
    servers = serve_node(cfg, 1, log_dir=tmp_path)
    try:
        assert [s.port for _, s in servers] == ports
        monkeypatch.setenv(ENGINE_HOSTS_ENV, "127.0.0.1")
        opponent = cfg.opponents[1]
        engine = open_engine(opponent.model, opponent.engine, cluster=cfg.cluster, seed=0, world_size=8)
        assert engine.server is None  # connected, not started: closing it leaves the node's server up
        groups = engine.generate([[1, 2, 3]], SamplingSettings(n=2, max_tokens=4, temperature=0.7, seed=3))
        assert [s.token_ids for s in groups[0]] == [(7, 8, 9), (7, 8, 9)]
        engine.close()
        assert servers[1][1].healthy()
    finally:
        for _, server in servers:
            server.stop()
    assert not any(server.healthy() for _, server in servers)


def test_serve_command_refuses_a_node_without_engines(capsys):
    from megatron_elo.cli import EXIT_BAD_CONFIG, main

    assert main(["serve", str(TINY), "--node", "0"]) == EXIT_BAD_CONFIG  # its opponents are colocated
    assert "serve --node 0: no dedicated engine (opponent or judge)" in capsys.readouterr().err
