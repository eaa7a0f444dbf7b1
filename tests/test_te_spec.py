"""The transformer-engine layer spec, on a machine without transformer-engine: megatron-core's own
TE spec builder (``get_gpt_layer_with_transformer_engine_spec``) run with stand-ins that keep TE's
parameter names (``tests/te_stand_ins.py``). Its parameter names are the local spec's under the
renaming megatron-core's local spec declares; an HF checkpoint loads into it and gives transformers'
logits; weight sync, checkpoint export, TP rules and weight decay see its fused norm weights."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_mapping import hf_to_megatron, megatron_to_hf, to_layer_spec, to_local, tp_rule
from megatron_elo.models.tiny import make_tiny_hf_model
from megatron_elo.parallel.spawn import run_distributed

pytest.importorskip("megatron.core")

ARCHES = {
    "qwen2": ArchConfig(family="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                        num_kv_heads=2, head_dim=32, vocab_size=80, max_position_embeddings=64),
    "qwen3": ArchConfig(family="qwen3", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                        num_kv_heads=2, head_dim=32, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True),
}


def test_te_names_are_the_renaming_megatron_cores_local_spec_declares():
    from megatron.core.models.gpt import gpt_layer_specs

    declared = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm").submodules.sharded_state_dict_keys_map
    arch = ARCHES["qwen2"]
    hf = _hf_state(arch)
    local = list(hf_to_megatron(hf, arch, layer_spec="local"))

    def renamed_as_declared(name):
        head, _, tail = name.partition(".layers.")
        index, _, rest = tail.partition(".")
        for old, new in declared.items():
            if tail and rest.startswith(old):
                return f"{head}.layers.{index}.{new}{rest[len(old):]}"
        return name

    assert list(hf_to_megatron(hf, arch, layer_spec="te")) == [renamed_as_declared(n) for n in local]
    assert [to_local(to_layer_spec(n, "te")) for n in local] == local
    assert tp_rule("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight") == "replicated"
    assert tp_rule("decoder.layers.0.mlp.linear_fc1.layer_norm_weight") == "replicated"
    assert tp_rule("decoder.layers.0.mlp.linear_fc1.weight") == "gate_up"


def _hf_state(arch: ArchConfig) -> dict[str, torch.Tensor]:
    import tempfile

    from megatron_elo.models.hf_io import load_hf_state_dict

    return load_hf_state_dict(make_tiny_hf_model(arch, tempfile.mkdtemp(), seed=0))


def te_model_session(rank, world_size, model_dir, tokens):
    """The TE-spec model (stand-ins) loaded from an HF checkpoint: its names, logits, weight-sync
    stream, export and weight-decay groups."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from te_stand_ins import te_layer_spec

    from megatron_elo.config.hf_arch import read_hf_arch
    from megatron_elo.models.gpt import build_gpt_model, load_full_state, model_layer_spec
    from megatron_elo.models.hf_io import load_hf_state_dict
    from megatron_elo.parallel.groups import build_process_groups
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.rollout.weight_sync import hf_weight_stream
    from megatron_elo.trainer.optimizer import skips_weight_decay

    arch = read_hf_arch(model_dir)
    groups = build_process_groups(ParallelLayout(tp=1, pp=1, dp=1))
    model = build_gpt_model(arch, groups, padded_vocab=arch.vocab_size, layers=te_layer_spec(arch))
    load_full_state(model, hf_to_megatron(load_hf_state_dict(model_dir), arch), arch, groups)  # local names in
    model.eval()
    with torch.no_grad():
        logits = model(tokens, torch.arange(tokens.shape[1])[None].expand_as(tokens), None)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    return {"spec": model_layer_spec(model), "names": sorted(state), "logits": logits,
            "synced": dict(hf_weight_stream(model, groups, arch)), "exported": megatron_to_hf(state, arch),
            "no_decay": sorted(n for n, p in model.named_parameters() if skips_weight_decay(n, p))}


@pytest.mark.parametrize("name", list(ARCHES))
def test_an_hf_checkpoint_runs_in_megatron_cores_te_spec_and_round_trips(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    from megatron_elo.models.hf_io import load_hf_state_dict

    arch = ARCHES[name]
    model_dir = str(make_tiny_hf_model(arch, tmp_path / "hf", seed=4))
    tokens = torch.randint(0, arch.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    result = run_distributed(te_model_session, 1, model_dir, tokens, timeout=300)[0]
    hf = load_hf_state_dict(model_dir)
    assert result["spec"] == "te"
    assert "decoder.layers.0.input_layernorm.weight" not in result["names"]
    assert result["names"] == sorted(hf_to_megatron(hf, arch, layer_spec="te"))
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(result["logits"], reference(tokens).logits, atol=1e-4, rtol=1e-4)
    for what in ("synced", "exported"):  # the engine's weights and an exported checkpoint: the HF ones, bitwise
        assert sorted(result[what]) == sorted(hf) and all(torch.equal(result[what][k], hf[k]) for k in hf), what
    assert {n for n in result["no_decay"] if "layer_norm_weight" in n} == {
        n for n in result["names"] if n.endswith("layer_norm_weight")}


def test_the_te_spec_is_refused_where_it_cannot_run():
    from megatron_elo.config.loader import load_config
    from megatron_elo.config.validate import ConfigError, validate
    from megatron_elo.models.gpt import resolve_layer_spec

    tiny = "configs/tiny_cpu.yaml"
    with pytest.raises(ConfigError, match="model.layer_spec=te: transformer-engine's layers run on cuda only"):
        validate(load_config(tiny, ["model.layer_spec=te"]), check_paths=False)
    with pytest.raises(ConfigError, match="opponents.0.model.layer_spec=local: only the trained policy"):
        validate(load_config(tiny, ["opponents.0.model.layer_spec=local"]), check_paths=False)
    assert resolve_layer_spec("auto", device="cpu") == "local"
    with pytest.raises(RuntimeError, match="model.layer_spec=te needs transformer-engine"):
        resolve_layer_spec("te", device="cpu")


def real_te_against_local(rank, world_size, arch, tokens):
    """The real TE spec (GPU, transformer-engine) and the local spec on the same weights, fp32."""
    from megatron_elo.models.gpt import build_gpt_model, load_full_state
    from megatron_elo.parallel.groups import build_process_groups
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.rollout.weight_sync import hf_weight_stream

    torch.manual_seed(0)
    groups = build_process_groups(ParallelLayout(tp=1, pp=1, dp=1))
    local = build_gpt_model(arch, groups, padded_vocab=arch.vocab_size, device="cuda", spec="local")
    with torch.no_grad():
        for parameter in local.parameters():
            parameter.normal_(0.0, 0.05)
    full = {k: v for k, v in local.state_dict().items() if not k.endswith("_extra_state")}
    te = build_gpt_model(arch, groups, padded_vocab=arch.vocab_size, device="cuda", spec="te")
    load_full_state(te, full, arch, groups)
    out = {}
    for name, model in (("local", local), ("te", te)):
        model.eval()
        with torch.no_grad():
            positions = torch.arange(tokens.shape[1], device="cuda")[None].expand(tokens.shape)
            out[name] = {"logits": model(tokens.cuda(), positions, None).float().cpu(),
                         "synced": {k: v.cpu() for k, v in hf_weight_stream(model, groups, arch)},
                         "names": sorted(k for k in model.state_dict() if not k.endswith("_extra_state"))}
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(ARCHES))
def test_the_real_te_spec_loads_the_local_weights_and_computes_the_same(name):
    from megatron_elo.models.gpt import transformer_engine_available

    if not transformer_engine_available():
        pytest.skip("needs transformer-engine (the NGC container)")
    arch = ARCHES[name]
    tokens = torch.randint(0, arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    result = run_distributed(real_te_against_local, 1, arch, tokens, timeout=300)[0]
    assert result["te"]["names"] == sorted(to_layer_spec(n, "te") for n in result["local"]["names"])
    torch.testing.assert_close(result["te"]["logits"], result["local"]["logits"], atol=2e-3, rtol=2e-3)  # TF32 / kernels
    assert sorted(result["te"]["synced"]) == sorted(result["local"]["synced"])
    assert all(torch.equal(result["te"]["synced"][k], v) for k, v in result["local"]["synced"].items())
