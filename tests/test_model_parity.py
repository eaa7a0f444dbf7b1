"""HF <-> Megatron: bit-exact round trips for TP/PP splits, and a megatron-core model loaded from an
HF checkpoint gives the same logits as transformers (fp32, 1e-4) at TP=1, TP=2 and PP=2."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.config.hf_arch import read_hf_arch
from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import load_hf_state_dict, save_hf_checkpoint
from megatron_elo.models.hf_mapping import (
    full_shape,
    hf_to_megatron,
    megatron_to_hf,
    merge_stages,
    padded_vocab_size,
    shard_for_rank,
    shard_tp,
    stage_state,
    unshard_tp,
)
from megatron_elo.models.tiny import make_tiny_hf_model
from megatron_elo.parallel.spawn import run_distributed

ARCHES = {
    "qwen2_gqa_untied": ArchConfig(family="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=96, num_attention_heads=4,
                                   num_kv_heads=2, head_dim=32, vocab_size=100, max_position_embeddings=64),
    "qwen3_tied": ArchConfig(family="qwen3", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                             num_kv_heads=2, head_dim=32, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True),
    "llama": ArchConfig(family="llama", num_layers=4, hidden_size=128, ffn_hidden_size=64, num_attention_heads=4,
                        num_kv_heads=2, head_dim=32, vocab_size=80, max_position_embeddings=64),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: make_tiny_hf_model(arch, root / name, seed=i) for i, (name, arch) in enumerate(ARCHES.items())}


@pytest.mark.parametrize("name", list(ARCHES))
@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_round_trip_is_bit_exact(checkpoints, name, tp, pp):
    arch = read_hf_arch(checkpoints[name])
    hf = load_hf_state_dict(checkpoints[name])
    full = hf_to_megatron(hf, arch, padded_vocab=padded_vocab_size(arch.vocab_size, tp, 64))
    # split into every (tp, pp) shard, then merge back
    shards = {(t, p): shard_for_rank(full, arch, tp_rank=t, tp=tp, pp_rank=p, pp=pp) for t in range(tp) for p in range(pp)}
    stages = [{k: unshard_tp(k, [shards[(t, p)][k] for t in range(tp)]) for k in shards[(0, p)]} for p in range(pp)]
    for p in range(pp):  # a receiver can size a merged weight from one shard's shape
        assert all(full_shape(k, tuple(v.shape), tp) == tuple(stages[p][k].shape) for k, v in shards[(0, p)].items())
    merged = merge_stages(stages, arch)
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[k], full[k]) for k in full)
    back = megatron_to_hf(merged, arch)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_qkv_interleaving_and_tp_slices_by_hand():
    arch = ARCHES["qwen2_gqa_untied"]  # 4 heads, 2 groups, head_dim 32 -> per group [q q k v]
    q = torch.arange(4 * 32).float()[:, None].repeat(1, 3)
    k = 1000 + torch.arange(2 * 32).float()[:, None].repeat(1, 3)
    v = 2000 + torch.arange(2 * 32).float()[:, None].repeat(1, 3)
    hf = {f"model.layers.0.self_attn.{n}_proj.weight": t for n, t in (("q", q), ("k", k), ("v", v))}
    from megatron_elo.models.hf_mapping import _fuse_qkv

    fused = _fuse_qkv(q, k, v, arch)
    expected_group0 = torch.cat([q[:64], k[:32], v[:32]])
    assert torch.equal(fused[:128], expected_group0)
    assert torch.equal(shard_tp("decoder.layers.0.self_attention.linear_qkv.weight", fused, tp_rank=1, tp=2),
                       torch.cat([q[64:], k[32:], v[32:]]))
    gate_up = torch.cat([torch.zeros(4, 2), torch.ones(4, 2)])
    assert torch.equal(shard_tp("decoder.layers.0.mlp.linear_fc1.weight", gate_up, tp_rank=0, tp=2),
                       torch.tensor([[0.0, 0], [0, 0], [1, 1], [1, 1]]))
    assert len(hf) == 3


def test_pp_stages_hold_the_right_weights():
    arch = ARCHES["qwen3_tied"]
    full = {"embedding.word_embeddings.weight": torch.zeros(1), "decoder.layers.0.x": torch.zeros(1),
            "decoder.layers.1.x": torch.ones(1), "decoder.final_layernorm.weight": torch.zeros(1)}
    first, last = (stage_state(full, arch, pp_rank=r, pp=2) for r in (0, 1))
    assert sorted(first) == ["decoder.layers.0.x", "embedding.word_embeddings.weight"]
    assert sorted(last) == ["decoder.final_layernorm.weight", "decoder.layers.0.x", "output_layer.weight"]
    assert torch.equal(last["decoder.layers.0.x"], torch.ones(1))


def test_missing_hf_weight_is_named(checkpoints):
    arch = read_hf_arch(checkpoints["llama"])
    hf = load_hf_state_dict(checkpoints["llama"])
    del hf["model.layers.3.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match=r"model.layers.3.mlp.up_proj.weight.*decoder.layers.3.mlp.linear_fc1.weight"):
        hf_to_megatron(hf, arch)


def test_export_reloads_in_transformers(checkpoints, tmp_path):
    transformers = pytest.importorskip("transformers")
    arch = read_hf_arch(checkpoints["qwen3_tied"])
    hf = load_hf_state_dict(checkpoints["qwen3_tied"])
    out = save_hf_checkpoint(megatron_to_hf(hf_to_megatron(hf, arch, padded_vocab=128), arch), arch, tmp_path / "export")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    reloaded = {k: v for k, v in model.state_dict().items()}
    assert all(torch.equal(reloaded[k], hf[k]) for k in hf)


# ---------------------------------------------------------------- logits parity (multi-process)


def megatron_logits(rank: int, world_size: int, model_dir: str, tp: int, pp: int, tokens: torch.Tensor):
    """Build the (tp, pp) Megatron model from an HF checkpoint on this rank; return full logits on
    the last stage's TP rank 0 (None elsewhere). Pipeline stages are driven by hand with send/recv."""
    import torch.distributed as dist

    from megatron_elo.models.gpt import build_gpt_model
    from megatron_elo.parallel.groups import build_process_groups
    from megatron_elo.parallel.layout import ParallelLayout

    torch.manual_seed(0)
    arch = read_hf_arch(model_dir)
    layout = ParallelLayout(tp=tp, pp=pp, dp=world_size // (tp * pp))
    groups = build_process_groups(layout)
    padded = padded_vocab_size(arch.vocab_size, tp, 64)
    full = hf_to_megatron(load_hf_state_dict(model_dir), arch, padded_vocab=padded)
    model = build_gpt_model(arch, groups, padded_vocab=padded)
    shard = shard_for_rank(full, arch, tp_rank=groups.coords.tp_rank, tp=tp, pp_rank=groups.coords.pp_rank, pp=pp)
    missing, unexpected = model.load_state_dict(shard, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    model.eval()
    positions = torch.arange(tokens.shape[1])[None].expand_as(tokens)
    batch, seq = tokens.shape
    with torch.no_grad():
        if not groups.is_first_stage:
            hidden = torch.empty(seq, batch, arch.hidden_size)
            dist.recv(hidden, src=layout.rank_of(tp_rank=groups.coords.tp_rank, dp_rank=0, pp_rank=groups.coords.pp_rank - 1))
            model.set_input_tensor(hidden)
        out = model(tokens if groups.is_first_stage else None, positions, None)
        if not groups.is_last_stage:
            dist.send(out.contiguous(), dst=layout.rank_of(tp_rank=groups.coords.tp_rank, dp_rank=0, pp_rank=groups.coords.pp_rank + 1))
            return None
        gathered = [torch.empty_like(out) for _ in range(tp)]
        dist.all_gather(gathered, out.contiguous(), group=groups.tp)
        logits = torch.cat(gathered, dim=-1)[..., : arch.vocab_size]
    return logits if groups.coords.tp_rank == 0 else None


@pytest.mark.parametrize("name", ["qwen2_gqa_untied", "qwen3_tied", "llama"])
@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_megatron_logits_equal_transformers(checkpoints, name, tp, pp):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("megatron.core")
    model_dir = str(checkpoints[name])
    arch = ARCHES[name]
    tokens = torch.randint(0, arch.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(tokens).logits
    results = run_distributed(megatron_logits, tp * pp, model_dir, tp, pp, tokens)
    logits = next(r for r in results if r is not None)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
