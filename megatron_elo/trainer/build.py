"""Build this rank's policy trainer from a local HF checkpoint: groups -> model shard -> weights -> trainer."""

from __future__ import annotations

from collections.abc import Sequence

from megatron_elo.config.hf_arch import read_hf_arch
from megatron_elo.config.schema import TrainerConfig
from megatron_elo.parallel.layout import ParallelLayout
from megatron_elo.trainer.optimizer import NO_DATA_PARALLEL_OPTIONS, DataParallelOptions
from megatron_elo.trainer.step import PolicyTrainer


def build_policy_trainer(model_dir: str, layout: ParallelLayout, config: TrainerConfig, *, total_steps: int,
                         dtype: str = "fp32", device: str = "cpu", pad_vocab_to_multiple_of: int | None = None,
                         frozen: bool = False, data_parallel: DataParallelOptions = NO_DATA_PARALLEL_OPTIONS,
                         loss: str = "grpo", layer_spec: str = "auto", loss_config=None,
                         side_by_side: Sequence[ParallelLayout] = ()) -> PolicyTrainer:
    """The trainer for this rank's (tp, pp) shard of the HF checkpoint ``model_dir`` (``frozen``: only
    for log-probs, e.g. the KL reference, so it gets no optimizer; ``data_parallel``: the distributed
    optimizer and overlapped reduction of ``trainer.optimizer`` megatron_core; ``loss``: a name in
    ``loss.registry``, ``loss_config`` its settings (default GRPO's, from ``config``); ``layer_spec``:
    ``model.layer_spec``; ``side_by_side``: every slice's layout when ``layout`` is this rank's slice of the
    world, ``build_process_groups``).

    Collective: every rank of the (already initialised) world calls it with the same layout (or slices).
    """
    from megatron_elo.models.gpt import build_gpt_model, load_full_state
    from megatron_elo.models.hf_io import load_hf_state_dict
    from megatron_elo.models.hf_mapping import hf_to_megatron, padded_vocab_size
    from megatron_elo.parallel.groups import build_process_groups

    arch = read_hf_arch(model_dir)
    groups = build_process_groups(layout, side_by_side=side_by_side)
    padded = padded_vocab_size(arch.vocab_size, layout.tp, pad_vocab_to_multiple_of)
    model = build_gpt_model(arch, groups, padded_vocab=padded, dtype=dtype, device=device, spec=layer_spec)
    load_full_state(model, hf_to_megatron(load_hf_state_dict(model_dir), arch, padded_vocab=padded), arch, groups)
    return PolicyTrainer(model=model, groups=groups, arch=arch, config=config, padded_vocab=padded, total_steps=total_steps,
                         frozen=frozen, data_parallel=data_parallel, loss=loss, loss_config=loss_config)
