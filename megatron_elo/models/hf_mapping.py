"""Hugging Face <-> megatron-core weight mapping for Qwen2 / Qwen3 / Llama, for any TP x PP split.

Pure tensor code (no process groups, no Megatron imports), one table row per weight:

    hf name                                   megatron name                                  how it is split over TP
    model.embed_tokens.weight                 embedding.word_embeddings.weight               vocab rows (padded)
    model.layers.{i}.self_attn.{q,k,v}_proj   decoder.layers.{i}.self_attention.linear_qkv   query groups (interleaved)
    model.layers.{i}.self_attn.o_proj.weight  decoder.layers.{i}.self_attention.linear_proj  input columns
    model.layers.{i}.mlp.{gate,up}_proj       decoder.layers.{i}.mlp.linear_fc1              gate and up rows, each split
    model.layers.{i}.mlp.down_proj.weight     decoder.layers.{i}.mlp.linear_fc2              input columns
    norms (input, post-attention, q/k, final) *_layernorm.weight                             replicated
    lm_head.weight                            output_layer.weight                            vocab rows (padded)

Names are the local layer spec's. The transformer-engine spec fuses the two pre-norms into the
linear after them (TE's LayerNormLinear keeps the norm as ``layer_norm_weight``): ``input_layernorm.``
is ``self_attention.linear_qkv.layer_norm_`` there and ``pre_mlp_layernorm.`` is
``mlp.linear_fc1.layer_norm_``, the renaming megatron-core's local spec itself declares
(``sharded_state_dict_keys_map``). ``to_layer_spec`` / ``to_local`` translate; every lookup here
takes either spec's names.

Megatron's fused QKV weight stacks, for each query group g: the group's query heads, then its key
head, then its value head ([ng * (heads_per_group + 2) * head_dim, H]); TP rank r holds the
contiguous groups r*ng/tp .. (r+1)*ng/tp - 1. linear_fc1 on rank r is [gate_r; up_r].
PP stage s holds layers s*L/pp .. (s+1)*L/pp - 1 under local indices 0..L/pp-1, the embedding on the
first stage and the final norm + output layer on the last (tied embeddings: megatron-core keeps the
last stage's copy of the embedding as ``output_layer.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from megatron_elo.config.schema import ArchConfig

_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")
TIED_OUTPUT = "output_layer.weight"

# TP split rules
REPLICATED, VOCAB, QKV, COLUMN, ROW, GATE_UP = "replicated", "vocab", "qkv", "column", "row", "gate_up"


@dataclass(frozen=True)
class WeightRule:
    """One weight: its Megatron name pattern, HF name pattern(s) and TP split rule."""

    megatron: str
    hf: tuple[str, ...]
    tp_rule: str
    families: tuple[str, ...] = ("qwen2", "qwen3", "llama")


LAYER = "decoder.layers.{i}."
HF_LAYER = "model.layers.{i}."
RULES: tuple[WeightRule, ...] = (
    WeightRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB),
    WeightRule(LAYER + "input_layernorm.weight", (HF_LAYER + "input_layernorm.weight",), REPLICATED),
    WeightRule(LAYER + "self_attention.linear_qkv.weight",
               tuple(HF_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"), QKV),
    WeightRule(LAYER + "self_attention.linear_qkv.bias",
               tuple(HF_LAYER + f"self_attn.{p}_proj.bias" for p in "qkv"), QKV, families=("qwen2",)),
    WeightRule(LAYER + "self_attention.q_layernorm.weight", (HF_LAYER + "self_attn.q_norm.weight",), REPLICATED, families=("qwen3",)),
    WeightRule(LAYER + "self_attention.k_layernorm.weight", (HF_LAYER + "self_attn.k_norm.weight",), REPLICATED, families=("qwen3",)),
    WeightRule(LAYER + "self_attention.linear_proj.weight", (HF_LAYER + "self_attn.o_proj.weight",), ROW),
    WeightRule(LAYER + "pre_mlp_layernorm.weight", (HF_LAYER + "post_attention_layernorm.weight",), REPLICATED),
    WeightRule(LAYER + "mlp.linear_fc1.weight", (HF_LAYER + "mlp.gate_proj.weight", HF_LAYER + "mlp.up_proj.weight"), GATE_UP),
    WeightRule(LAYER + "mlp.linear_fc2.weight", (HF_LAYER + "mlp.down_proj.weight",), ROW),
    WeightRule("decoder.final_layernorm.weight", ("model.norm.weight",), REPLICATED),
    WeightRule("output_layer.weight", ("lm_head.weight",), VOCAB),
)


LAYER_SPECS = ("local", "te")
TE_FUSED_NORMS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                  "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}  # local spec prefix -> TE spec prefix


def to_layer_spec(name: str, layer_spec: str) -> str:
    """A local-spec Megatron name as ``layer_spec`` ("local" or "te") names the same weight."""
    if layer_spec == "te":
        for local, fused in TE_FUSED_NORMS.items():
            match = _LAYER_INDEX.match(name)
            if match and name[match.end():].startswith(local):
                return name[:match.end()] + fused + name[match.end() + len(local):]
    elif layer_spec != "local":
        raise ValueError(f"unknown layer spec {layer_spec!r}; one of {LAYER_SPECS}")
    return name


def to_local(name: str) -> str:
    """Inverse of ``to_layer_spec``: either spec's Megatron name as the local spec names it."""
    match = _LAYER_INDEX.match(name)
    if match:
        for local, fused in TE_FUSED_NORMS.items():
            if name[match.end():].startswith(fused):
                return name[:match.end()] + local + name[match.end() + len(fused):]
    return name


def padded_vocab_size(vocab_size: int, tp: int, multiple: int | None) -> int:
    """Megatron's padding: the smallest multiple of ``multiple * tp`` >= vocab (no padding: None)."""
    if multiple is None:
        return vocab_size
    step = multiple * tp
    return -(-vocab_size // step) * step


def _rules_for(arch: ArchConfig) -> list[WeightRule]:
    rules = [r for r in RULES if arch.family in r.families]
    if arch.tie_word_embeddings:
        rules = [r for r in rules if r.megatron != "output_layer.weight"]
    return rules


def _layer_names(rule: WeightRule, arch: ArchConfig) -> Iterable[tuple[str, tuple[str, ...]]]:
    if "{i}" not in rule.megatron:
        yield rule.megatron, rule.hf
        return
    for i in range(arch.num_layers):
        yield rule.megatron.format(i=i), tuple(h.format(i=i) for h in rule.hf)


# ---------------------------------------------------------------- full (unsharded) conversion


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
    """HF q [nh*hd, ...], k/v [ng*hd, ...] -> Megatron interleaved [ng * (nh/ng + 2) * hd, ...]."""
    groups, head_dim = arch.num_kv_heads, arch.kv_channels
    per_group = arch.num_attention_heads // groups
    tail = q.shape[1:]
    q = q.reshape(groups, per_group * head_dim, *tail)
    k = k.reshape(groups, head_dim, *tail)
    v = v.reshape(groups, head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def _split_qkv(qkv: torch.Tensor, arch: ArchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``_fuse_qkv`` (for any number of groups present in ``qkv``)."""
    head_dim = arch.kv_channels
    per_group = arch.num_attention_heads // arch.num_kv_heads
    tail = qkv.shape[1:]
    grouped = qkv.reshape(-1, (per_group + 2) * head_dim, *tail)
    q, k, v = torch.split(grouped, [per_group * head_dim, head_dim, head_dim], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def hf_to_megatron(hf_state: Mapping[str, torch.Tensor], arch: ArchConfig, *, padded_vocab: int | None = None,
                   layer_spec: str = "local") -> dict[str, torch.Tensor]:
    """Full HF state dict -> full Megatron state dict (TP = PP = 1 layout, global layer indices), named
    as ``layer_spec`` names them.

    Embedding / output rows are zero-padded to ``padded_vocab``. Raises KeyError naming a missing
    HF weight.
    """
    out: dict[str, torch.Tensor] = {}
    for rule in _rules_for(arch):
        for megatron_name, hf_names in _layer_names(rule, arch):
            missing = [n for n in hf_names if n not in hf_state]
            if missing:
                raise KeyError(f"HF checkpoint has no weight {missing[0]!r} (needed for {megatron_name})")
            tensors = [hf_state[n] for n in hf_names]
            if rule.tp_rule == QKV:
                value = _fuse_qkv(*tensors, arch)
            elif rule.tp_rule == GATE_UP:
                value = torch.cat(tensors, dim=0)
            else:
                value = tensors[0]
            if rule.tp_rule == VOCAB and padded_vocab is not None and padded_vocab > value.shape[0]:
                value = torch.cat([value, value.new_zeros(padded_vocab - value.shape[0], *value.shape[1:])])
            out[to_layer_spec(megatron_name, layer_spec)] = value.clone()
    return out


def megatron_weight_to_hf(name: str, value: torch.Tensor, arch: ArchConfig) -> list[tuple[str, torch.Tensor]]:
    """One full Megatron weight (global layer index) -> its HF tensor(s); [] for the tied output copy."""
    if arch.tie_word_embeddings and name == "output_layer.weight":
        return []
    name = to_local(name)
    match = _LAYER_INDEX.match(name)
    generic = _LAYER_INDEX.sub(LAYER, name)
    rule = next((r for r in _rules_for(arch) if r.megatron == generic), None)
    if rule is None:
        raise KeyError(f"no HF name for Megatron weight {name!r} (model_type {arch.family})")
    hf_names = [h.format(i=match.group(1)) if match else h for h in rule.hf]
    if rule.tp_rule == QKV:
        parts = _split_qkv(value, arch)
    elif rule.tp_rule == GATE_UP:
        parts = tuple(torch.chunk(value, 2, dim=0))
    elif rule.tp_rule == VOCAB:
        parts = (value[: arch.vocab_size],)
    else:
        parts = (value,)
    return [(n, p.clone()) for n, p in zip(hf_names, parts, strict=True)]


def megatron_to_hf(state: Mapping[str, torch.Tensor], arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Full Megatron state dict -> HF state dict (vocab padding removed; no ``lm_head`` when tied,
    as HF checkpoints store it)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not name.endswith("_extra_state"):
            out.update(megatron_weight_to_hf(name, value, arch))
    return out


# ---------------------------------------------------------------- TP sharding


def tp_rule(megatron_name: str) -> str:
    """How Megatron weight ``megatron_name`` (either spec's name) is split over TP: replicated, vocab,
    qkv, column, row or gate_up."""
    generic = _LAYER_INDEX.sub(LAYER, to_local(megatron_name))
    for rule in RULES:
        if rule.megatron == generic:
            return rule.tp_rule
    raise KeyError(f"no TP rule for Megatron weight {megatron_name!r}")


def is_tp_sharded(name: str) -> bool:
    """True when Megatron weight ``name`` is split over TP ranks (False: replicated on each)."""
    return tp_rule(name) != REPLICATED


def shard_tp(name: str, full: torch.Tensor, *, tp_rank: int, tp: int) -> torch.Tensor:
    """The slice of Megatron weight ``name`` that TP rank ``tp_rank`` of ``tp`` holds."""
    rule = tp_rule(name)
    if rule == REPLICATED or tp == 1:
        return full.clone()
    if rule in (VOCAB, QKV, COLUMN):  # contiguous row blocks (QKV: whole query groups)
        return torch.chunk(full, tp, dim=0)[tp_rank].clone()
    if rule == ROW:
        return torch.chunk(full, tp, dim=1)[tp_rank].clone()
    if rule == GATE_UP:
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[tp_rank], torch.chunk(up, tp, dim=0)[tp_rank]]).clone()
    raise AssertionError(rule)


def full_shape(name: str, local_shape: tuple[int, ...], tp: int) -> tuple[int, ...]:
    """Shape of the merged weight whose TP shard has ``local_shape`` (inverse of ``shard_tp``'s split)."""
    rule = tp_rule(name)
    if rule == REPLICATED or tp == 1:
        return tuple(local_shape)
    dim = 1 if rule == ROW else 0  # vocab / qkv / column / gate_up split rows, row-parallel splits columns
    return tuple(size * tp if i == dim else size for i, size in enumerate(local_shape))


def unshard_tp(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``shard_tp``: the full weight from every TP rank's slice (in rank order)."""
    rule = tp_rule(name)
    if rule == REPLICATED or len(shards) == 1:
        return shards[0].clone()
    if rule in (VOCAB, QKV, COLUMN):
        return torch.cat(shards, dim=0)
    if rule == ROW:
        return torch.cat(shards, dim=1)
    if rule == GATE_UP:
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
    raise AssertionError(rule)


# ---------------------------------------------------------------- PP stages


def stage_layers(num_layers: int, *, pp_rank: int, pp: int) -> range:
    """Global indices of the layers on pipeline stage ``pp_rank``."""
    per_stage = num_layers // pp
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def local_to_global(name: str, start: int) -> str:
    """``decoder.layers.{i}.x`` -> ``decoder.layers.{i + start}.x`` (a stage's local index to the global one)."""
    return _LAYER_INDEX.sub(lambda m: f"decoder.layers.{int(m.group(1)) + start}.", name)


def stage_state(full: Mapping[str, torch.Tensor], arch: ArchConfig, *, pp_rank: int, pp: int) -> dict[str, torch.Tensor]:
    """The weights of PP stage ``pp_rank`` with stage-local layer indices (what its GPTModel loads)."""
    layers = stage_layers(arch.num_layers, pp_rank=pp_rank, pp=pp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    out = {}
    for name, value in full.items():
        match = _LAYER_INDEX.match(name)
        if match:
            index = int(match.group(1))
            if index in layers:
                out[f"decoder.layers.{index - layers.start}." + name[match.end():]] = value
        elif name.startswith("embedding."):
            if first:
                out[name] = value
            if last and not first and arch.tie_word_embeddings:  # megatron-core's copy on the last stage
                out[TIED_OUTPUT] = value
        elif last:
            out[name] = value
    return out


def merge_stages(stages: list[Mapping[str, torch.Tensor]], arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Inverse of ``stage_state``: global layer indices from every stage's weights (in stage order)."""
    pp = len(stages)
    out: dict[str, torch.Tensor] = {}
    for pp_rank, stage in enumerate(stages):
        start = stage_layers(arch.num_layers, pp_rank=pp_rank, pp=pp).start
        for name, value in stage.items():
            if _LAYER_INDEX.match(name):
                out[local_to_global(name, start)] = value
            elif not (arch.tie_word_embeddings and name == TIED_OUTPUT):  # the tied copy: the embedding is kept
                out[name] = value
    return out


def shard_for_rank(full: Mapping[str, torch.Tensor], arch: ArchConfig, *, tp_rank: int, tp: int, pp_rank: int, pp: int) -> dict[str, torch.Tensor]:
    """Everything one (tp_rank, pp_rank) model shard loads, from the full Megatron state dict."""
    return {name: shard_tp(name, value, tp_rank=tp_rank, tp=tp)
            for name, value in stage_state(full, arch, pp_rank=pp_rank, pp=pp).items()}
