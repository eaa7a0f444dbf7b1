"""``megatron-elo bench trainer``: tokens/s, step time, MFU and peak memory of the policy train step.

    megatron-elo bench trainer                                             # CPU: a small Qwen2 shape, batch 2 x 256
    megatron-elo bench trainer --padding --batch 16 --micro-batch 2 --seq 512   # trimmed micro-batches, skipped old pass
    megatron-elo bench trainer --loss grpo dpo --batch 8 --micro-batch 4   # a pair loss (4 pairs per step) beside GRPO
    megatron-elo bench trainer --shape qwen2.5-1.5b --batch 4 --seq 2048 --device cuda --dtype bf16 --kernels torch triton \
        --optimizer megatron_core torch

One process (TP = PP = DP = 1), random weights and tokens, the whole step as the loop runs it:
micro-batched forward + backward of the clipped policy-gradient loss over half of each row as
response tokens, grad clipping, AdamW. Per ``--kernels`` x ``--optimizer`` setting it prints the median step time of
``--steps`` steps after ``--warmup``, tokens/s (all tokens of the batch), MFU against ``--peak-tflops``
(default: the H100's dense bf16 989 TFLOP/s on CUDA; none on CPU) and the peak memory (CUDA: the most
allocated at once, model, gradients and optimizer state included, comparable across optimizers that
allocate their buffers at build or during the step; CPU: the process's peak RSS). The reference row is issue #5's
measurement on an H100 (megatron-core local spec + SDPA, bf16, Qwen2.5-1.5B shape, 4 x 2048).

``--loss`` a pair loss (dpo, ipo, simpo, orpo, sppo, inpo): rows are (chosen, rejected) pairs and the
table adds the reference pass (one no-grad forward of the batch, what ``reference=initial`` costs once per
pair); the loss itself is arithmetic on [B] sequence sums, so the log-prob side is the same as GRPO's.

MFU counts the model's matmul flops (Megatron's convention, full attention score matrices): per token
forward 2 * (h*(q + 2*kv) + q*h + 3*h*f) per layer + 4 * s * q per layer (scores and values) + 2*h*V for
the output layer; backward twice that.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from dataclasses import dataclass

import torch

from megatron_elo.config.schema import ArchConfig, TrainerConfig
from megatron_elo.loss.preference import PairLossConfig

SHAPES = {  # HF-config shapes with random weights
    "small": ArchConfig(family="qwen2", num_layers=4, hidden_size=256, ffn_hidden_size=704, num_attention_heads=4,
                        num_kv_heads=2, vocab_size=8192, max_position_embeddings=4096, tie_word_embeddings=True),
    "qwen2.5-1.5b": ArchConfig(family="qwen2", num_layers=28, hidden_size=1536, ffn_hidden_size=8960, num_attention_heads=12,
                               num_kv_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True),
    "qwen2.5-7b": ArchConfig(family="qwen2", num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                             num_kv_heads=4, vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False),
}
H100_BF16_DENSE_TFLOPS = 989.0
REFERENCE = "issue #5 reference: H100, local spec + SDPA, bf16, qwen2.5-1.5b, 4 x 2048: 32.8k tokens/s, ~32% MFU, 47 GB peak"


@dataclass(frozen=True, kw_only=True)
class TrainerRow:
    """One measured (``--kernels``, ``--optimizer``) setting."""

    kernels: str
    optimizer: str
    loss: str
    step_ms: float
    reference_ms: float | None  # pair losses: the no-grad reference forward of the batch
    tokens_per_s: float
    mfu: float | None
    peak_gb: float


def train_flops_per_token(arch: ArchConfig, seq_len: int) -> float:
    """Matmul flops of forward + backward per token (see the module docstring)."""
    h, f, q = arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads * arch.kv_channels
    kv = arch.num_kv_heads * arch.kv_channels
    per_layer = 2 * (h * (q + 2 * kv) + q * h + 3 * h * f) + 4 * seq_len * q
    forward = arch.num_layers * per_layer + 2 * h * arch.vocab_size
    return 3.0 * forward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench trainer`` options."""
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small", help="model shape (random weights)")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward (default: --batch)")
    parser.add_argument("--kernels", nargs="+", choices=["torch", "triton"], default=["torch"], help="loss-side settings to time")
    parser.add_argument("--optimizer", nargs="+", choices=["auto", "torch", "megatron_core"], default=["auto"],
                        help="trainer.optimizer settings to time (megatron_core: CUDA only; auto: megatron_core on CUDA)")
    parser.add_argument("--distributed-optimizer", action="store_true", help="megatron_core: shard optimizer state over DP")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: H100 bf16 dense on CUDA)")
    parser.add_argument("--padding", action="store_true",
                        help="instead: one rollout batch's trainer work (old-log-prob pass + update) with responses of "
                             "varied length, padded vs trimmed micro-batches vs trimmed and on-policy (no old pass)")
    parser.add_argument("--loss", nargs="+", default=["grpo"], choices=["grpo", "dpo", "ipo", "simpo", "orpo", "sppo", "inpo"],
                        help="losses to time on the same rows; a pair loss takes --batch as chosen and rejected rows (even)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")


def _trainer(arch: ArchConfig, args: argparse.Namespace, kernels: str, optimizer: str, trim: bool = True,
             loss: str = "grpo"):
    from megatron_elo.models.gpt import build_gpt_model
    from megatron_elo.parallel.groups import build_process_groups
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.trainer.optimizer import DataParallelOptions
    from megatron_elo.trainer.step import PolicyTrainer

    groups = build_process_groups(ParallelLayout(tp=1, pp=1, dp=1))
    model = build_gpt_model(arch, groups, padded_vocab=arch.vocab_size, dtype=args.dtype, device=args.device)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    config = TrainerConfig(lr=1e-6, micro_batch_size=args.micro_batch or args.batch, global_batch_size=args.batch,
                           kernels=kernels, precision=args.dtype, optimizer=optimizer, trim_micro_batches=trim)
    loss_config = None if loss == "grpo" else PairLossConfig(loss=loss)
    return PolicyTrainer(model=model, groups=groups, arch=arch, config=config, padded_vocab=arch.vocab_size, total_steps=10**6,
                         data_parallel=DataParallelOptions(distributed_optimizer=args.distributed_optimizer), loss=loss,
                         loss_config=loss_config)


def _batch(arch: ArchConfig, args: argparse.Namespace, trainer, loss: str):
    from megatron_elo.trainer.step import TrainBatch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (args.batch, args.seq), generator=generator).to(args.device)
    mask = torch.zeros(args.batch, args.seq, dtype=torch.bool, device=args.device)
    mask[:, args.seq // 2:] = True  # the second half of each row is the response
    advantages = torch.where(torch.arange(args.batch) % 2 == 0, 1.0, -1.0).to(args.device)
    if loss != "grpo":  # rows 2i, 2i + 1: a pair; its references' sums from one no-grad pass, as the recipes do
        sums = (trainer.compute_logprobs(tokens, mask=mask) * mask).sum(dim=1)
        return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.zeros_like(advantages), old_logprobs=None,
                          ref_sequence_logprobs=sums - 0.1, start_sequence_logprobs=sums + 0.1)
    old = trainer.compute_logprobs(tokens) * mask
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=advantages, old_logprobs=old)


def _reference_ms(trainer, batch, cuda: bool) -> float:
    """One no-grad forward of the batch (a pair loss's reference pass), ms."""
    start = time.perf_counter()
    trainer.compute_logprobs(batch.tokens, mask=batch.response_mask)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def measure(args: argparse.Namespace, kernels: str, optimizer: str, loss: str = "grpo") -> TrainerRow:
    """Time ``args.steps`` train steps of one (``--kernels``, ``--optimizer``, ``--loss``) setting."""
    arch = SHAPES[args.shape]
    trainer = _trainer(arch, args, kernels, optimizer, loss=loss)
    batch = _batch(arch, args, trainer, loss)
    cuda = args.device == "cuda"
    if cuda:
        gc.collect()  # the previous setting's trainer (megatron-core's DDP hooks make reference cycles)
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq / step_s
    peak = args.peak_tflops or (H100_BF16_DENSE_TFLOPS if cuda else None)
    mfu = tokens_per_s * train_flops_per_token(arch, args.seq) / (peak * 1e12) if peak else None
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    reference_ms = _reference_ms(trainer, batch, cuda) if loss != "grpo" else None
    return TrainerRow(kernels=kernels, optimizer=type(trainer.optimizer).__name__, loss=loss, step_ms=step_s * 1e3,
                      reference_ms=reference_ms, tokens_per_s=tokens_per_s, mfu=mfu, peak_gb=peak_gb)


PADDING_VARIANTS = (  # (label, trim_micro_batches, separate old-log-prob pass)
    ("every micro-batch at the step's longest row, old log-probs by their own pass", False, True),
    ("micro-batches trimmed to their own longest row, old log-probs by their own pass", True, True),
    ("trimmed, on-policy: old log-probs from the update's forward", True, False),
)


def _ragged_batch(arch: ArchConfig, args: argparse.Namespace):
    """Prompts of seq/4 tokens, responses of seeded lengths from seq/16 to the rest (as RL rollouts
    end at different lengths), right-padded to seq."""
    from megatron_elo.trainer.step import TrainBatch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (args.batch, args.seq), generator=generator)
    prompt = args.seq // 4
    ends = prompt + torch.randint(max(1, args.seq // 16), args.seq - prompt + 1, (args.batch,), generator=generator)
    positions = torch.arange(args.seq)[None]
    mask = (positions >= prompt) & (positions < ends[:, None])
    advantages = torch.where(torch.arange(args.batch) % 2 == 0, 1.0, -1.0)
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=advantages, old_logprobs=None).to(torch.device(args.device))


def measure_padding(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(variant, median ms of old-log-prob pass + train step) per ``PADDING_VARIANTS`` entry."""
    from dataclasses import replace

    arch = SHAPES[args.shape]
    batch = _ragged_batch(arch, args)
    rows = []
    for label, trim, separate_pass in PADDING_VARIANTS:
        trainer = _trainer(arch, args, args.kernels[0], args.optimizer[0], trim=trim)
        times = []
        for index in range(args.warmup + args.steps):
            start = time.perf_counter()
            old = trainer.compute_logprobs(batch.tokens, mask=batch.response_mask) if separate_pass else None
            trainer.train_step(replace(batch, old_logprobs=old))
            if args.device == "cuda":
                torch.cuda.synchronize()
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
        rows.append((label, statistics.median(times) * 1e3))
        del trainer
        gc.collect()
    return rows


def format_padding_table(rows: list[tuple[str, float]], args: argparse.Namespace) -> str:
    """The ``--padding`` table: each variant's time and its ratio to the padded one."""
    from megatron_elo.utils.report import device_label

    batch = _ragged_batch(SHAPES[args.shape], args)
    fill = float(batch.response_mask.sum()) / batch.response_mask.numel()
    lines = [f"bench trainer --padding on {device_label(args.device, 'one process')}: shape {args.shape}, batch {args.batch} x "
             f"{args.seq} (prompts {args.seq // 4}, responses {fill:.0%} of the padded tokens), micro-batch "
             f"{args.micro_batch or args.batch}, {args.dtype}, kernels {args.kernels[0]}, median of {args.steps} after "
             f"{args.warmup} warm-up", "", "| trainer work per rollout batch | ms | speed-up |", "|---|---|---|"]
    lines += [f"| {label} | {ms:.1f} | {rows[0][1] / ms:.2f}x |" for label, ms in rows]
    return "\n".join(lines)


def format_table(rows: list[TrainerRow], args: argparse.Namespace) -> str:
    """The markdown table with the device, shape and the reference beside."""
    from megatron_elo.utils.report import device_label

    memory = "peak GB allocated" if args.device == "cuda" else "process peak RSS GB"
    lines = [f"bench trainer on {device_label(args.device, 'one process')}: shape {args.shape}, batch {args.batch} x {args.seq}, "
             f"micro-batch {args.micro_batch or args.batch}, {args.dtype}, median of {args.steps} after {args.warmup} warm-up",
             "", f"| loss | kernels | optimizer | step ms | reference pass ms | tokens/s | MFU | {memory} |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        mfu = f"{100 * row.mfu:.1f}%" if row.mfu is not None else "- (give --peak-tflops)"
        reference = f"{row.reference_ms:.1f}" if row.reference_ms is not None else "-"
        lines.append(f"| {row.loss} | {row.kernels} | {row.optimizer} | {row.step_ms:.1f} | {reference} | "
                     f"{row.tokens_per_s:,.0f} | {mfu} | {row.peak_gb:.2f} |")
    lines += ["", REFERENCE]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``megatron-elo bench trainer``."""
    from megatron_elo.utils.report import emit_table

    if args.batch < 1 or args.seq < 2 or args.steps < 1:
        raise ValueError("bench trainer: --batch >= 1, --seq >= 2 and --steps >= 1 are needed")
    if args.micro_batch is not None and args.batch % args.micro_batch:
        raise ValueError(f"bench trainer: --micro-batch {args.micro_batch} must divide --batch {args.batch}")
    pair_losses = [loss for loss in args.loss if loss != "grpo"]
    if pair_losses and (args.batch % 2 or (args.micro_batch or args.batch) % 2):
        raise ValueError("bench trainer: a pair loss needs an even --batch and --micro-batch (chosen and rejected rows)")
    if pair_losses and args.padding:
        raise ValueError("bench trainer: --padding times GRPO's old-log-prob pass; leave --loss at grpo")
    if "triton" in args.kernels and args.device == "cpu":
        from kernels._runtime import enable_interpreter_without_cuda

        enable_interpreter_without_cuda()  # correct but slow: time the triton setting on the GPU
    from megatron_elo.parallel.spawn import init_world_of_one

    init_world_of_one("nccl" if args.device == "cuda" else "gloo")
    if args.padding:
        emit_table(format_padding_table(measure_padding(args), args), args.out)
        return 0
    rows = [measure(args, kernels, optimizer, loss) for loss in args.loss for kernels in args.kernels
            for optimizer in args.optimizer]
    emit_table(format_table(rows, args), args.out)
    return 0
