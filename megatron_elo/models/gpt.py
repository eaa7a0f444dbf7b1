"""The policy / reference model: a megatron-core GPTModel built from an ``ArchConfig``.

Layer spec (``model.layer_spec``): ``te`` is megatron-core's transformer-engine spec (NGC container;
its linears carry the pre-norms, see ``hf_mapping``), ``local`` megatron-core's local spec with core
attention replaced by ``SDPAttention`` (torch SDPA: flash / memory-efficient kernels on GPU, the math
kernel on CPU), ``auto`` the TE spec where transformer-engine imports and the model is on CUDA.
Weights travel under local-spec names (``load_full_state`` renames them for a TE model). How the
model is parallelised comes only from the ``ProcessGroups`` passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from megatron_elo.config.schema import ArchConfig
from megatron_elo.parallel.groups import ProcessGroups

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def transformer_engine_available() -> bool:
    """True when transformer-engine imports (only in the NGC container; used for the TE layer spec)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA library load
        return False
    return True


class SDPAttention(torch.nn.Module):
    """Core attention with ``torch.nn.functional.scaled_dot_product_attention`` (causal, GQA).

    Same constructor and forward signature as megatron-core's DotProductAttention:
    query [s, b, heads, d], key / value [s, b, groups, d] -> [s, b, heads * d].
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__()
        self.config = config
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise NotImplementedError("SDPAttention does not take packed sequences; pad the batch instead")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
        seq, batch = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


def transformer_config(arch: ArchConfig, *, tp: int, pp: int, dtype: str, sequence_parallel: bool = False):
    """megatron-core TransformerConfig for ``arch`` (RMSNorm, SwiGLU, RoPE, GQA, no linear biases
    except Qwen2's QKV bias, Qwen3's QK norm). Fusions that need CUDA/TE are off."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch_dtype = DTYPES[dtype]
    return TransformerConfig(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_kv_heads, kv_channels=arch.kv_channels,
        normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=arch.family == "qwen2", qk_layernorm=arch.family == "qwen3",
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel,
        params_dtype=torch_dtype, pipeline_dtype=torch_dtype, bf16=torch_dtype == torch.bfloat16, fp16=torch_dtype == torch.float16,
        use_cpu_initialization=True, perform_initialization=False,  # weights always come from a full state dict
        bias_activation_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False, masked_softmax_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False,
        # the trainer's losses arrive divided by their global normaliser: megatron-core's pipeline schedules
        # and DDP use them as given (no division by the micro-batch count, gradients summed over DP)
        calculate_per_token_loss=True,
    )


def layer_spec(arch: ArchConfig, *, use_transformer_engine: bool):
    """TE spec (NGC container) or the local spec with SDPA core attention."""
    from megatron.core.models.gpt import gpt_layer_specs

    qk_norm = arch.family == "qwen3"
    if use_transformer_engine:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_norm)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def resolve_layer_spec(setting: str, *, device: str) -> str:
    """``model.layer_spec`` -> "te" or "local" (auto: te on CUDA where transformer-engine imports);
    te where it cannot run raises naming the setting."""
    if setting == "auto":
        return "te" if device == "cuda" and transformer_engine_available() else "local"
    if setting == "te" and (device != "cuda" or not transformer_engine_available()):
        raise RuntimeError("model.layer_spec=te needs transformer-engine (the NGC container) and cluster.device=cuda; "
                           "use layer_spec=local or auto here")
    if setting not in ("te", "local"):
        raise ValueError(f"model.layer_spec={setting!r}: one of auto, local, te")
    return setting


def model_layer_spec(model) -> str:
    """"te" when ``model``'s layers carry their pre-norms in the linears (TE spec), else "local"."""
    return "te" if any(".linear_qkv.layer_norm_" in name for name, _ in model.named_parameters()) else "local"


def build_gpt_model(arch: ArchConfig, groups: ProcessGroups, *, padded_vocab: int, dtype: str = "fp32",
                    device: str = "cpu", sequence_parallel: bool = False, spec: str = "auto", layers=None):
    """This rank's shard of the model (its TP slice of its PP stage), uninitialised: load weights
    with ``load_full_state``. spec: ``model.layer_spec``; layers: a megatron-core layer ModuleSpec
    to use instead (tests build the TE spec's module tree with stand-in modules)."""
    from megatron.core.models.gpt import GPTModel

    layout = groups.layout
    if layers is None:
        layers = layer_spec(arch, use_transformer_engine=resolve_layer_spec(spec, device=device) == "te")
    config = transformer_config(arch, tp=layout.tp, pp=layout.pp, dtype=dtype, sequence_parallel=sequence_parallel)
    model = GPTModel(
        config, layers, vocab_size=padded_vocab,
        max_sequence_length=arch.max_position_embeddings, pre_process=groups.is_first_stage,
        post_process=groups.is_last_stage, parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings, position_embedding_type="rope",
        rotary_base=int(arch.rope_theta), pg_collection=groups.megatron_collection(),
    )
    if device == "cpu":
        _keep_rope_on_cpu(model)
    return model.to(device)


def _keep_rope_on_cpu(model) -> None:
    """megatron-core 0.16's RotaryEmbedding.get_emb moves inv_freq to CUDA unconditionally; on CPU
    swap in a subclass that computes the same table where inv_freq lives."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    class CpuRotaryEmbedding(RotaryEmbedding):
        def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
            freqs = self.get_freqs_non_repeated(max_seq_len, offset)
            if self.rotary_interleaved:
                emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
            else:
                emb = torch.cat((freqs, freqs), dim=-1)
            return emb[:, None, None, :]

    rope = getattr(model, "rotary_pos_emb", None)
    if rope is not None:
        rope.__class__ = CpuRotaryEmbedding


def load_full_state(model, full_state, arch: ArchConfig, groups: ProcessGroups) -> None:
    """Load this rank's slice of a full (TP = PP = 1) Megatron state dict (local-spec names, or the
    model's own) into ``model``; every weight must be present (``_extra_state`` entries excepted)."""
    from megatron_elo.models.hf_mapping import shard_for_rank, to_layer_spec, to_local

    c, layout = groups.coords, groups.layout
    shard = shard_for_rank(full_state, arch, tp_rank=c.tp_rank, tp=layout.tp, pp_rank=c.pp_rank, pp=layout.pp)
    spec = model_layer_spec(model)
    shard = {to_layer_spec(to_local(name), spec): value for name, value in shard.items()}
    missing, unexpected = model.load_state_dict(shard, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"weights do not fit the model shard: missing {missing[:5]}, unexpected {unexpected[:5]}")


@contextmanager
def output_layer_returns_hidden(model) -> Iterator[SimpleNamespace]:
    """Inside the block, the last stage's forward returns the final hidden states [B, S, H] (after
    the final norm) instead of logits [B, S, V/tp]; the yielded holder's ``weight`` is then the
    output weight [V/tp, H] the layer would have used (the embedding's when tied). For the fused
    linear log-prob kernel, which must never see the logits. The layer's own forward would also
    all-reduce grad_hidden over TP in backward; the kernel does that itself."""
    layer = model.output_layer
    holder = SimpleNamespace(weight=None)

    def passthrough(hidden_states, weight=None, runtime_gather_output=None):
        holder.weight = weight if weight is not None else layer.weight
        return hidden_states, None

    layer.forward = passthrough  # an instance attribute shadows the class method until deleted
    try:
        yield holder
    finally:
        del layer.forward
