"""Open an opponent's or the judge's engine where its config says: in this process or as a server.

    engine = open_engine(model_cfg, engine_cfg, seed=0, device="cpu", world_size=1, log_path="opp.log")
    engine.generate(prompts, settings, seeds)   # the same token-id interface either way
    engine.close()
"""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import EngineConfig, ModelConfig


def launches_server(engine: EngineConfig, *, world_size: int) -> bool:
    """Whether ``engine`` (an opponent's or the judge's) runs as a server: launch=server, or auto in a
    multi-rank world (an in-process vLLM engine there hangs)."""
    return engine.launch == "server" or (engine.launch == "auto" and world_size > 1)


def open_engine(model: ModelConfig, engine: EngineConfig, *, seed: int, device: str, world_size: int,
                log_path: str | Path | None = None):
    """A ``RolloutEngine`` in this process or a ``ServedRolloutEngine`` (started, healthy) for ``model``."""
    if launches_server(engine, world_size=world_size):
        from megatron_elo.rollout.served import ServedRolloutEngine

        return ServedRolloutEngine.launch(model.path, engine, seed=seed, dtype=model.dtype, device=device, log_path=log_path)
    from megatron_elo.rollout.engine import RolloutEngine

    return RolloutEngine(model.path, engine, seed=seed, dtype=model.dtype)
