"""Where an opponent's or the judge's engine runs, and how the run reaches it.

    engine = open_engine(model_cfg, engine_cfg, cluster=cfg.cluster, seed=0, world_size=1, log_path="opp.log")
    engine.generate(prompts, settings, seeds)   # the same token-id interface wherever it runs
    engine.close()

- in this process (``launch: in_process``, or ``auto`` in a one-process run): a ``RolloutEngine``;
- ``server_url`` set: the server already running there;
- ``placement: dedicated``: the server ``megatron-elo serve CONFIG --node N`` started on node N, found at
  ``http://<host of node N>:<port>`` (hosts of the non-trainer nodes, in order, from
  ``MEGATRON_ELO_ENGINE_HOSTS``, which launch/slurm.sbatch sets);
- otherwise (colocated server): a server the run starts itself on loopback, on the first devices of
  its node, stopped by ``close``.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_elo.config.schema import ClusterConfig, EngineConfig, ModelConfig, RunConfig

ENGINE_HOSTS_ENV = "MEGATRON_ELO_ENGINE_HOSTS"


def launches_server(engine: EngineConfig, *, world_size: int) -> bool:
    """Whether ``engine`` (an opponent's or the judge's) runs as a server: launch=server, a dedicated
    placement, a server_url, or auto in a multi-rank world (an in-process vLLM engine there hangs)."""
    return (engine.launch == "server" or engine.placement == "dedicated" or engine.server_url is not None
            or (engine.launch == "auto" and world_size > 1))


def dedicated_url(engine: EngineConfig, cluster: ClusterConfig, hosts: str | None = None) -> str:
    """``http://<host>:<port>`` of a dedicated engine on node ``engine.node`` (a non-trainer node)."""
    hosts = os.environ.get(ENGINE_HOSTS_ENV) if hosts is None else hosts
    names = [h for h in (hosts or "").split(",") if h]
    index = engine.node - (cluster.trainer_nodes or cluster.nodes)
    if not 0 <= index < len(names):
        raise ValueError(f"a dedicated engine on node {engine.node} needs that node's host name: set {ENGINE_HOSTS_ENV} "
                         f"to the non-trainer nodes' hosts in order (launch/slurm.sbatch does), got {hosts!r}; or set "
                         f"its engine.server_url")
    return f"http://{names[index]}:{engine.port}"


def open_engine(model: ModelConfig, engine: EngineConfig, *, cluster: ClusterConfig, seed: int, world_size: int,
                log_path: str | Path | None = None, name: str = "engine"):
    """A ``RolloutEngine`` in this process or a ``ServedRolloutEngine`` (healthy) for ``model``."""
    if not launches_server(engine, world_size=world_size):
        from megatron_elo.rollout.engine import RolloutEngine

        return RolloutEngine(model.path, engine, seed=seed, dtype=model.dtype)
    from megatron_elo.rollout.served import ServedRolloutEngine

    if engine.server_url or engine.placement == "dedicated":
        url = engine.server_url or dedicated_url(engine, cluster)
        return ServedRolloutEngine.connect(url, model.path, engine)
    return ServedRolloutEngine.launch(model.path, engine, seed=seed, dtype=model.dtype, device=cluster.device,
                                      log_path=log_path, name=name)


def node_engines(cfg: RunConfig, node: int) -> list[tuple[str, ModelConfig, EngineConfig]]:
    """(name, model, engine) of every dedicated opponent / judge engine placed on ``node`` without a server_url."""
    engines = [(o.name, o.model, o.engine) for o in cfg.opponents]
    if cfg.judge.kind == "llm":
        engines.append(("judge", cfg.judge.model, cfg.judge.engine))
    return [(name, model, engine) for name, model, engine in engines
            if engine.placement == "dedicated" and engine.node == node and engine.server_url is None]


def serve_node(cfg: RunConfig, node: int, *, log_dir: str | Path | None = None) -> list[tuple[str, object]]:
    """Start every dedicated engine of ``node`` as a vLLM server on 0.0.0.0:<its port> with its own
    devices (CUDA_VISIBLE_DEVICES = first_device .. + tp*dp), all loading at once; returns the
    healthy (name, ``ServedEngine``) pairs (the caller stops them). Raises ServerError, with the others stopped,
    if one fails."""
    from megatron_elo.rollout.served import ServedEngine, server_devices, vllm_server_command

    servers = []
    for name, model, engine in node_engines(cfg, node):
        devices = server_devices(engine, device=cfg.cluster.device)
        command = vllm_server_command(model.path, engine, port=engine.port, dtype=model.dtype, seed=cfg.seed, host="0.0.0.0")
        servers.append((name, ServedEngine(command, port=engine.port, devices=devices, startup_timeout_s=engine.startup_timeout_s,
                                           log_path=Path(log_dir) / f"{name}.log" if log_dir else None)))
    try:
        for _, server in servers:
            server.launch()
        for _, server in servers:
            server.wait_until_healthy()
    except BaseException:
        for _, server in servers:
            server.stop()
        raise
    return servers
