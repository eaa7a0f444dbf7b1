"""The two-rank twin of a one-process test run: the same config on tensor-parallel 2 (trainer and engine)."""

from __future__ import annotations

import shutil
from pathlib import Path


def tensor_parallel_twin(cfg, straight_run_dir: str, out_dir: Path) -> dict:
    """``cfg`` (a validated config) as a raw dict for two ranks under ``out_dir``: trainer and colocated engine
    on TP 2, two devices on the node. The one-process run's opponent answers (``opponent_cache`` beside
    ``straight_run_dir``) are copied in, so the twin plays the same games without starting a server."""
    from megatron_elo.config.loader import config_to_dict

    shutil.copytree(Path(straight_run_dir).parent / "opponent_cache", out_dir / "opponent_cache")
    raw = config_to_dict(cfg)
    raw.update(output_dir=str(out_dir), run_name="two_ranks")
    raw["parallel"].update(tp=2)
    raw["rollout"]["engine"].update(tp=2, dp=1)
    raw["cluster"]["devices_per_node"] = 2
    return raw
