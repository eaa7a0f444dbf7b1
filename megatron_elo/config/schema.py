"""Typed run configuration: keyword-only dataclasses, one per config group.

Every field carries its help text in ``metadata["help"]``; ``megatron-elo train --help`` prints
them. YAML files in ``configs/`` fill these classes (see ``loader.py``); cross-field checks that
need more than one group (parallel sizes against the world, heads against TP, paths on disk)
live in ``validate.py``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any, Literal

from megatron_elo.config.eval_schema import BenchmarkConfig
from megatron_elo.config.pairs_schema import PairsConfig  # noqa: F401  (re-exported: every group from schema)
from megatron_elo.config.schema_base import opt
from megatron_elo.config.self_improve_schema import EvaConfig, EvolveConfig, TsrConfig
from megatron_elo.config.sparta_schema import SpartaConfig, TribePlayerConfig

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass(kw_only=True)
class ArchConfig:
    """Transformer architecture, in Hugging Face terms. Read from ``<path>/config.json`` when the
    model has a path; written out in YAML for random-initialised (tiny) models or to validate a
    layout without the checkpoint on disk."""

    family: Literal["qwen2", "qwen3", "llama"] = opt("qwen2", "HF model_type: qwen2 (QKV bias), qwen3 (QK norm), llama.")
    num_layers: int = opt(2, "Transformer layers (HF num_hidden_layers).")
    hidden_size: int = opt(64, "Model width H.")
    ffn_hidden_size: int = opt(128, "SwiGLU intermediate size (HF intermediate_size).")
    num_attention_heads: int = opt(2, "Query heads.")
    num_kv_heads: int = opt(2, "Key/value heads (grouped-query attention; HF num_key_value_heads).")
    head_dim: int | None = opt(None, "Per-head width; default hidden_size / num_attention_heads. vLLM's CPU attention needs >= 32.")
    vocab_size: int = opt(128, "Vocabulary size V of the checkpoint (before any TP padding).")
    max_position_embeddings: int = opt(512, "Longest sequence the RoPE tables cover.")
    rope_theta: float = opt(1_000_000.0, "RoPE base.")
    rms_norm_eps: float = opt(1e-6, "RMSNorm epsilon.")
    tie_word_embeddings: bool = opt(False, "Output layer shares the input embedding.")

    @property
    def kv_channels(self) -> int:
        """Per-head width (head_dim) in elements."""
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass(kw_only=True)
class ModelConfig:
    """A model: the trained policy, an opponent, or the judge."""

    path: str | None = opt(None, "HF checkpoint directory on local disk (config.json + safetensors). None: random init from `arch`.")
    arch: ArchConfig | None = opt(None, "Architecture; filled from <path>/config.json when path is set.")
    tokenizer: str | None = opt(None, "Tokenizer directory; default: the model path.")
    chat_template_kwargs: dict[str, Any] = opt(factory=dict, help="Extra arguments of this model's chat template "
                                               "(HF apply_chat_template), e.g. {enable_thinking: false} for Qwen3 models, "
                                               "which think first unless told not to.")
    dtype: Dtype = opt("bf16", "Parameter / compute dtype.")
    layer_spec: Literal["auto", "local", "te"] = opt(
        "auto", "The trained policy's megatron-core layers: te = transformer-engine's (fused norm + linear; NGC "
                "container, cuda), local = megatron-core's own with torch SDPA attention, auto = te on cuda where "
                "transformer-engine imports. Only the policy is built with megatron-core (opponents, judge: auto).")
    pad_vocab_to_multiple_of: int | None = opt(
        None, "Pad the embedding so vocab is a multiple of this times TP (Megatron's make_vocab_size_divisible_by). "
        "None: vocab must already divide by TP."
    )


@dataclass(kw_only=True)
class EngineConfig:
    """A vLLM engine's own parallel layout and placement (independent of the trainer's)."""

    tp: int = opt(1, "Engine tensor-parallel size.")
    dp: int = opt(1, "Engine data-parallel replicas.")
    placement: Literal["colocated", "dedicated"] = opt(
        "colocated", "colocated: time-shares the trainer's devices (sleep mode between rollouts); "
        "dedicated: its own devices, given by node and first_device."
    )
    node: int = opt(0, "Dedicated engines: index of the node it runs on (a non-trainer node; `megatron-elo serve` starts it there).")
    first_device: int = opt(0, "Dedicated engines: first local device index; it uses tp*dp consecutive devices.")
    gpu_memory_utilization: float = opt(0.5, "Fraction of device memory vLLM may take (CPU: sized from the node; ~0.2 on a small machine).")
    kv_cache_gib: float | None = opt(None, "Explicit KV-cache size in GiB (vLLM kv_cache_memory_bytes); needed for several "
                                     "engines in one CPU process. None: gpu_memory_utilization decides.")
    max_model_len: int = opt(1024, "Longest prompt + response the engine accepts, in tokens.")
    enforce_eager: bool | None = opt(None, "Skip CUDA graph capture (faster start, slower decode). None: eager on "
                                           "cluster.device=cpu, CUDA graphs on cuda.")
    launch: Literal["auto", "in_process", "server"] = opt(
        "auto", "Opponents and the judge: in_process = a vLLM engine inside the run's process (single-process runs "
        "only: an in-process engine hangs in a multi-rank world); server = an OpenAI-compatible vLLM server process "
        "started by the run on loopback (or the one at server_url); auto = in_process on one rank, server on several "
        "(placement=dedicated is always a server). The policy's engine is always in-process (colocated)."
    )
    server_url: str | None = opt(None, "launch=server: use the server already running at this URL instead of starting "
                                 "or finding one; its /health must answer.")
    port: int | None = opt(None, "Server port. placement=dedicated: required; `megatron-elo serve --node N` starts the "
                           "node's servers on it and the run finds them at http://<node's host>:port. None: a free port.")
    startup_timeout_s: float = opt(900.0, "launch=server: seconds a started server has to answer /health.")
    request_timeout_s: float = opt(600.0, "launch=server: seconds per request before it is retried.")
    retries: int = opt(3, "launch=server: retries of a failed request (exponential backoff) before the batch fails.")
    restarts: int = opt(2, "launch=server, a server the run started: times it is started again when it dies; past "
                           "them the run writes a checkpoint of the last completed step and stops (rerun to resume).")

    @property
    def num_devices(self) -> int:
        """Devices (ranks) this engine spans: tp * dp."""
        return self.tp * self.dp


@dataclass(kw_only=True)
class ClusterConfig:
    """Where the job runs. The trainer's world is `trainer_nodes * devices_per_node` ranks."""

    device: Literal["cpu", "cuda"] = opt("cuda", "cpu runs everything over gloo; cuda over NCCL.")
    nodes: int = opt(1, "Nodes in the allocation.")
    devices_per_node: int = opt(8, "GPUs per node (CPU: processes per node).")
    trainer_nodes: int | None = opt(None, "Nodes running the trainer (torchrun world); the rest host dedicated engines. Default: all.")
    timeout_minutes: float = opt(30.0, "How long a rank waits in a collective (init_process_group's timeout), above "
                                       "all for the driver's one-rank phases (games, judging, evaluation, making "
                                       "players); past it the run stops with an error naming this setting.")


@dataclass(kw_only=True)
class ParallelConfig:
    """The trainer's (megatron-core) parallel layout. tp * pp * dp must equal the trainer world size (times
    algorithm.sparta.slices for a SPARTA tribe side by side: the layout of one slice)."""

    tp: int = opt(1, "Tensor-parallel size.")
    pp: int = opt(1, "Pipeline-parallel size.")
    dp: int = opt(1, "Data-parallel size.")
    sequence_parallel: bool = opt(False, "Megatron sequence parallelism: not supported yet (validation refuses true).")
    distributed_optimizer: bool = opt(True, "With trainer.optimizer megatron_core: shard fp32 main weights and Adam state "
                                            "over DP (megatron-core's distributed optimizer).")
    overlap_grad_reduce: bool = opt(False, "With trainer.optimizer megatron_core: start each gradient bucket's DP "
                                           "reduction during the last micro-batch's backward (hides it behind compute).")


@dataclass(kw_only=True)
class TrainerConfig:
    """Optimisation and the policy-gradient loss."""

    steps: int = opt(500, "Training steps (one rollout batch each).")
    lr: float = opt(1e-6, "Peak learning rate.")
    min_lr: float = opt(0.0, "Learning rate at the end of the decay.")
    lr_schedule: Literal["constant", "cosine", "linear"] = opt("constant", "Decay after warmup.")
    warmup_steps: int = opt(0, "Linear warmup optimizer steps.")
    weight_decay: float = opt(0.0, "AdamW weight decay (not on biases and norm weights).")
    adam_beta1: float = opt(0.9, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    grad_clip: float = opt(1.0, "Global grad-norm clip; 0 disables.")
    micro_batch_size: int = opt(1, "Sequences per forward/backward on one DP rank.")
    trim_micro_batches: bool = opt(True, "Run each micro-batch at its own longest row (the step's right padding cut "
                                         "off) instead of the step's longest; the loss is the same up to rounding.")
    global_batch_size: int = opt(64, "Sequences per optimizer step (all DP ranks); must divide prompts_per_step * n_per_prompt.")
    clip_low: float = opt(0.2, "PPO ratio clip below: 1 - clip_low.")
    clip_high: float = opt(0.28, "PPO ratio clip above: 1 + clip_high (decoupled, DAPO-style).")
    kl_coef: float = opt(0.0, "Coefficient of the KL to the frozen reference; 0 skips the reference model.")
    kl_estimator: Literal["k1", "k3"] = opt("k3", "KL estimator: k1 = new - ref; k3 = exp(ref - new) - (ref - new) - 1.")
    entropy_coef: float = opt(0.0, "Entropy bonus coefficient.")
    loss_agg: Literal["token_mean", "seq_mean"] = opt("token_mean", "token_mean: mean over all response tokens; seq_mean: mean per sequence, then over sequences.")
    std_normalize: bool = opt(True, "Divide group-centred rewards by the group std (GRPO); False: Dr.GRPO-style centring only.")
    kernels: Literal["torch", "triton"] = opt("torch", "Loss-side implementation: torch reference or fused Triton kernels.")
    optimizer: Literal["auto", "torch", "megatron_core"] = opt(
        "auto", "Gradient buffers + AdamW: torch (DP all-reduce, torch AdamW; runs anywhere) or megatron_core (its DDP "
                "and optimizer, parallel.distributed_optimizer; CUDA only). auto: megatron_core on cuda, torch on cpu.")
    pipeline_schedule: Literal["auto", "sequential", "1f1b"] = opt(
        "auto", "With parallel.pp > 1: 1f1b = megatron-core's one-forward-one-backward schedule (stages work on "
                "different micro-batches at once; CUDA only), sequential = one micro-batch at a time through all "
                "stages (any device). auto: 1f1b on cuda.")
    precision: Dtype = opt("bf16", "Dtype of the trainer's Megatron model (weights and compute); bf16 / fp16 keep fp32 "
                                   "main weights and Adam state in the optimizer (mixed precision).")


@dataclass(kw_only=True)
class RolloutConfig:
    """Policy sampling."""

    prompts_per_step: int = opt(32, "Prompts per training step (sharded over DP).")
    n_per_prompt: int = opt(8, "Samples per prompt (the GRPO group).")
    max_new_tokens: int = opt(512, "Response length cap, tokens.")
    max_prompt_tokens: int = opt(512, "Prompt length cap in the policy's tokens (chat template included); "
                                      "max_prompt_tokens + max_new_tokens must fit engine.max_model_len.")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling.")
    top_k: int = opt(-1, "Top-k sampling; -1 disables.")
    overlong_prompt: Literal["drop", "truncate", "error"] = opt(
        "drop", "A prompt over max_prompt_tokens: drop it and draw another (training; held-out prompts are left out), "
                "keep its last max_prompt_tokens tokens (truncate: the end holds the question and the generation "
                "prompt), or stop with an error naming it; counted (prompts/overlong_dropped, _truncated).")
    stale_weights_threshold: float = opt(
        0.1, "Mean |trainer - engine| log-prob (nats) of the sampled tokens above which the engine is taken to sample "
             "with other weights than the trainer's (logged every step: sync/logprob_diff_mean, _max, per replica). "
             "fp32: ~1e-6 after a good sync; bf16 kernels: ~1e-2.")
    stale_weights_action: Literal["warn", "stop"] = opt("warn", "Past stale_weights_threshold: log a warning, or stop the run.")
    overlap_judging: bool = opt(False, "Make step t's opponent answers and verdicts (on their own engines, a driver "
                                       "thread) while the trainer runs step t-1's update: the policy trains one step "
                                       "off-policy (old log-probs taken right after sampling; PPO-clipped ratios). "
                                       "false: every update is on-policy.")
    engine: EngineConfig = opt(factory=EngineConfig, help="The policy's own vLLM engine (colocated with the trainer).")


@dataclass(kw_only=True)
class OpponentConfig:
    """One frozen member of the opponent pool (its answers are stored and reused: players/answer_store.py)."""

    name: str = opt(MISSING, "Unique name, used in metrics and the answer cache.")
    model: ModelConfig = opt(factory=ModelConfig, help="The opponent model.")
    engine: EngineConfig = opt(factory=lambda: EngineConfig(placement="dedicated"), help="Its engine layout.")
    initial_rating: float | None = opt(None, "Starting Elo; default algorithm.elo.initial_rating.")
    temperature: float = opt(0.7, "Sampling temperature for its answers.")
    max_new_tokens: int = opt(512, "Its response cap, tokens.")


@dataclass(kw_only=True)
class JudgeConfig:
    """Who decides a game."""

    kind: Literal["llm", "programmatic"] = opt("llm", "llm: an LLM judge in its own engine; programmatic: a checker for a verifiable task.")
    model: ModelConfig | None = opt(None, "LLM judge model (kind=llm).")
    engine: EngineConfig = opt(factory=lambda: EngineConfig(placement="dedicated"), help="LLM judge engine layout.")
    template: str | None = opt(None, "Pairwise judge prompt template file (kind=llm); default: built-in.")
    grade_template: str | None = opt(None, "algorithm.name=point with kind=llm: the 1-10 grading template ({question}, "
                                           "{answer}; reply 'Rating: [[7]]'); default configs/eval/single_grade/single.txt.")
    swap_positions: bool = opt(True, "Judge both orders; a verdict that flips with the order is a tie.")
    logprob_verdicts: bool = opt(False, "Decide by log p(A / B / C) of the token after '[[' (one decoding step, its top "
                                        "log-probs) instead of generating and parsing a reply.")
    task: Literal["arithmetic"] | None = opt(None, "Verifiable task for kind=programmatic (the addition checker).")
    noise: float = opt(0.0, "Programmatic judge: probability a verdict is replaced by a coin flip.")
    max_new_tokens: int = opt(256, "LLM judge: verdict length cap, tokens (a reply cut there needs a [[verdict]]).")
    overlong: Literal["truncate", "drop"] = opt(
        "truncate", "LLM judge: a prompt longer than engine.max_model_len - max_new_tokens: cut both answers to "
                    "max_answer_tokens (marked in the prompt), or drop the game; either is counted (judge/overlong_rate).")
    max_answer_tokens: int = opt(1024, "LLM judge, overlong=truncate: tokens kept of each answer of an overlong prompt.")


@dataclass(kw_only=True)
class EloConfig:
    """Elo ratings and the opponent-sampling curriculum."""

    k_factor: float = opt(32.0, "Elo K: R += K * (S - E).")
    batch_reduction: Literal["mean", "sum"] = opt(
        "mean", "rating_update=batch / anchored: a player's changes over one step's games: mean (one K-sized step per "
        "batch, whatever the batch size) or sum (classic Elo, K per game)."
    )
    rating_update: Literal["batch", "anchored", "prompt_share", "window_mle"] = opt(
        "batch", "How ratings move after a step's games. batch: every player in them by batch_reduction (a rarely drawn "
        "opponent moves a full K-sized step on one prompt's correlated games); anchored: the frozen opponents keep their "
        "initial ratings, only the policy moves; prompt_share: K * (a player's summed S - E) / (the step's games), a "
        "step in proportion to the prompts it played; window_mle: the maximum-likelihood (Bradley-Terry) ratings of "
        "the last window_steps steps' games, each opponent held near its initial rating by a prior of window_prior."
    )
    window_steps: int = opt(20, "rating_update=window_mle: steps of games in the fitting window.")
    window_prior: float = opt(200.0, "rating_update=window_mle: standard deviation (rating points) of the Gaussian "
                                     "priors around each opponent's initial rating and the policy's previous one.")
    initial_rating: float = opt(1000.0, "Default starting rating (the policy's, and opponents' without their own).")
    selection: Literal["rating_gap", "expected_score"] = opt(
        "rating_gap", "Selection logits: -|R_policy - R_j| / T, or -|E(policy beats j) - target_win_rate| / T."
    )
    target_win_rate: float = opt(0.5, "Target expected score for selection=expected_score.")
    temperature: float = opt(100.0, "Sampling temperature T (rating points for rating_gap; score units for expected_score).")
    temperature_schedule: Literal["constant", "linear", "cosine"] = opt("constant", "How T moves from temperature to temperature_end over the run.")
    temperature_end: float | None = opt(None, "Final T for a schedule; default = temperature.")


@dataclass(kw_only=True)
class AlgorithmConfig:
    """Which method turns games into rewards."""

    name: Literal["elo_evolve", "static_pairwise", "point", "pairs_online", "pairs_offline", "sparta", "eva", "tsr",
                  "evolve"] = opt(
        "elo_evolve", "elo_evolve: Elo-sampled adaptive pool; static_pairwise: one fixed opponent; point: absolute judge "
                      "score; pairs_online: preference pairs from each iteration's judged games (algorithm.pairs); "
                      "pairs_offline: preference pairs from a file, no engine; sparta: a tribe of trained `players` "
                      "duel, judge each other and all train on the pairs (algorithm.sparta); eva: a creator evolves "
                      "the informative prompts (algorithm.eva); tsr: Temporal Self-Rewarding, the initial and a "
                      "look-ahead model pick rejected and chosen (algorithm.tsr); evolve: answers and their chained "
                      "refinements make the pairs (algorithm.evolve).")
    static_opponent: str | None = opt(None, "static_pairwise: the opponent's name.")
    reward_model: ModelConfig | None = opt(None, "point: a point-wise reward model (an HF sequence-classification "
                                                 "checkpoint, run with transformers on the driver) scores each answer; "
                                                 "None: the judge scores. Read by point, eva, tsr and evolve.")
    tie_reward: float = opt(0.5, "Reward of a tie.")
    elo: EloConfig = opt(factory=EloConfig, help="Elo ratings and opponent sampling.")
    pairs: PairsConfig = opt(factory=PairsConfig, help="Preference-pair training (pairs_online, pairs_offline; "
                                                       "sparta's update: loss, beta, reference, epochs).")
    sparta: SpartaConfig = opt(factory=SpartaConfig, help="SPARTA's duels and panel (algorithm.name=sparta).")
    eva: EvaConfig = opt(factory=EvaConfig, help="eva's evolving prompts (algorithm.name=eva).")
    tsr: TsrConfig = opt(factory=TsrConfig, help="Temporal Self-Rewarding's anchor and look-ahead (algorithm.name=tsr).")
    evolve: EvolveConfig = opt(factory=EvolveConfig, help="EVOLVE's refinement chain (algorithm.name=evolve).")


@dataclass(kw_only=True)
class SyntheticDataConfig:
    """A generated, verifiable task (the tiny CPU demo)."""

    task: Literal["arithmetic"] = opt("arithmetic", "Which task: integer addition (the only one built).")
    num_train: int = opt(2000, "Training prompts.")
    num_eval: int = opt(200, "Held-out problems: pairs (a, b) that training and the players' SFT never draw.")
    num_validation: int = opt(100, "Validation problems (for choosing settings: eval.split=validation), disjoint from "
                                   "the held-out and the training ones.")
    max_operand: int = opt(20, "Largest operand of the problems.")
    seed: int = opt(0, "Seed of the split of all (max_operand + 1)^2 problems and of the training draws.")


@dataclass(kw_only=True)
class DataConfig:
    """Prompts."""

    format: Literal["jsonl", "parquet", "synthetic"] = opt("jsonl", "Prompt source: jsonl / parquet files (each read by its "
                                                             "suffix, so they may be mixed) or the synthetic task.")
    train_path: str | None = opt(None, "Training prompts file (jsonl or parquet).")
    eval_path: str | None = opt(None, "Held-out prompts file (reported numbers; never for choosing settings).")
    validation_path: str | None = opt(None, "Validation prompts file: what eval.split=validation evaluates on.")
    prompt_field: str = opt("prompt", "Field holding the prompt text (or chat messages).")
    id_field: str | None = opt("id", "Field holding a unique prompt id; rows without it get a hash of the prompt.")
    reference_field: str | None = opt(None, "Field holding a checkable answer (needed by programmatic judges).")
    system_prompt: str | None = opt(None, "System message put first (chat template on), unless a conversation has its own system turn.")
    apply_chat_template: bool = opt(True, "Wrap prompts with each player's own tokenizer's chat template.")
    shuffle: bool = opt(True, "Shuffle every epoch (seeded).")
    loader: Literal["default", "dali"] = opt("default", "default: in-process; dali: NVIDIA DALI pipeline over pre-tokenized shards.")
    token_shards: str | None = opt(None, "loader=dali: directory of pre-tokenized prompt shards; written there from "
                                   "train_path with the policy tokenizer when missing. Default: <output_dir>/prompt_tokens.")
    synthetic: SyntheticDataConfig = opt(factory=SyntheticDataConfig, help="format=synthetic settings.")


@dataclass(kw_only=True)
class EvalConfig:
    """Periodic held-out evaluation."""

    every_steps: int = opt(50, "Evaluate every N steps; 0 disables.")
    split: Literal["held_out", "validation"] = opt("held_out", "Which prompts evaluation uses: held_out (the numbers "
                                                    "to report) or validation (while choosing settings, so the held-out "
                                                    "numbers stay untuned).")
    num_prompts: int = opt(200, "Prompts per evaluation (the first ones of the split); 0: no evaluation at all (a "
                                "pairs_offline run then needs no engine).")
    opponents: list[str] = opt(factory=list, help="Held-out opponent names (from `opponents`); empty: all.")
    temperature: float = opt(0.0, "0: the greedy policy against each opponent's greedy answer. > 0: samples_per_prompt "
                                  "policy samples at this temperature against one sampled answer per opponent (at the "
                                  "opponent's own temperature): the regime training games are played in. The same seeds "
                                  "at every evaluation, so evaluations differ only by the policy's weights.")
    samples_per_prompt: int = opt(1, "Policy samples per held-out prompt; must be 1 when temperature is 0.")
    seed: int = opt(0, "Sampling seed of evaluation (policy samples, opponents' sampled answers); apart from the "
                       "run's seed, so runs of every seed and method are evaluated on the same draws.")
    benchmarks: list[BenchmarkConfig] = opt(factory=list, help="Benchmarks of the offline harness (`megatron-elo eval "
                                                              "--benchmark NAME`): AlpacaEval-, MT-Bench- and "
                                                              "Arena-Hard-style, with the LLM judge.")
    benchmark: str | None = opt(None, "Training's periodic evaluation runs this benchmark (a name in benchmarks) on the "
                                      "policy instead of the game-based held-out win rate; its headline number is "
                                      "eval/win_rate (single_grade: the mean grade / 10). eval.every_steps and "
                                      "num_prompts=0 still apply; split, opponents, temperature, samples_per_prompt "
                                      "and seed do not (the benchmark's own settings do).")


@dataclass(kw_only=True)
class TrackingConfig:
    """Experiment tracking (rank 0 only)."""

    backend: Literal["mlflow", "none"] = opt("mlflow", "mlflow or none.")
    tracking_uri: str | None = opt(None, "MLflow URI; default $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db.")
    experiment: str = opt("megatron-elo", "MLflow experiment name.")
    log_every: int = opt(1, "Log metrics every N steps.")
    system_metrics: bool = opt(True, "Log CPU/GPU/memory system metrics.")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Saving and resuming."""

    every_steps: int = opt(100, "Save every N steps; 0: only at the end.")
    keep_last: int = opt(2, "Checkpoints kept on disk.")
    resume: str = opt("auto", "auto: resume from the newest sound checkpoint in output_dir/run_name, if any (a corrupt "
                              "newer one is skipped with a warning naming the file); never; or a checkpoint directory "
                              "(step_*) to resume from, checked first.")
    export_hf: bool = opt(True, "Export the final policy as an HF checkpoint.")


@dataclass(kw_only=True)
class SnapshotConfig:
    """One prepared player: where it is saved and after how many SFT steps."""

    path: str = opt(MISSING, "Directory the snapshot is saved to (an HF checkpoint); models point at it with model.path.")
    sft_steps: int = opt(MISSING, "SFT steps before this snapshot: fewer steps, weaker player.")


@dataclass(kw_only=True)
class PrepareConfig:
    """Make tiny players locally before the run (the CPU demo): one model of ``arch`` is trained by SFT
    on the synthetic task's training problems and saved at each snapshot's step count. Snapshots already
    made with the same settings (their ``sft.json``) are reused; others are made again."""

    arch: ArchConfig = opt(factory=ArchConfig, help="Architecture of the prepared players.")
    snapshots: list[SnapshotConfig] = opt(factory=list, help="Snapshots to save (path, SFT steps).")
    lr: float = opt(1e-3, "SFT learning rate.")
    batch_size: int = opt(64, "SFT batch size (problems).")
    seed: int = opt(0, "SFT seed.")


@dataclass(kw_only=True)
class RunConfig:
    """A whole run. Top-level keys of a YAML config are these fields."""

    run_name: str = opt("run", "Name of the run (MLflow run name, output sub-folder).")
    output_dir: str = opt("runs", "Where checkpoints, the resolved config and artifacts go (output_dir/run_name).")
    seed: int = opt(1234, "Global seed.")
    cluster: ClusterConfig = opt(factory=ClusterConfig, help="Nodes and devices.")
    parallel: ParallelConfig = opt(factory=ParallelConfig, help="Trainer TP/PP/DP.")
    model: ModelConfig = opt(factory=ModelConfig, help="The policy.")
    trainer: TrainerConfig = opt(factory=TrainerConfig, help="Optimisation and loss.")
    rollout: RolloutConfig = opt(factory=RolloutConfig, help="Policy sampling and its engine.")
    opponents: list[OpponentConfig] = opt(factory=list, help="The opponent pool.")
    players: list[TribePlayerConfig] = opt(factory=list, help="algorithm.name=sparta: the trained players (each `model` "
                                                            "with its own weights), time-sharing the trainer's ranks.")
    judge: JudgeConfig = opt(factory=JudgeConfig, help="The judge.")
    algorithm: AlgorithmConfig = opt(factory=AlgorithmConfig, help="The method.")
    data: DataConfig = opt(factory=DataConfig, help="Prompts.")
    eval: EvalConfig = opt(factory=EvalConfig, help="Held-out evaluation.")
    tracking: TrackingConfig = opt(factory=TrackingConfig, help="MLflow.")
    checkpoint: CheckpointConfig = opt(factory=CheckpointConfig, help="Checkpoints.")
    prepare: PrepareConfig | None = opt(None, "Tiny players made locally before the run (CPU demo); None for real checkpoints.")
