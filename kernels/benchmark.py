"""Loss-side kernels against their peers: forward + backward time and peak extra memory.

    megatron-elo bench kernels                       # GPU: Qwen2.5-7B shapes, bf16 (T = 8192, 16384)
    megatron-elo bench kernels --tokens 256 --hidden 256 --vocab 4096 --dtype fp32   # CPU smoke run

Rows, each beside its floor (measured H100 figures as defaults: --peak-tflops 800, --peak-tbps 3.0):
- linear log-prob + entropy, fwd+bwd from hidden [T, H] and weight [V, H]: ours against torch eager
  (materialised logits), torch.compile of the same, Liger fused linear cross-entropy and Cut
  Cross-Entropy (both compute the log-prob part only, no entropy); floor 6*T*H*V flops.
- log-softmax statistics read from materialised logits [T, V] (forward): our row kernel against
  torch log_softmax + gather + entropy; floor: one read of the logits.
- clipped PG loss with KL and entropy, fwd+bwd over [B, S] per-token values: ours against torch
  eager and torch.compile; floor: the bytes read and written once.
- advantage + broadcast onto [B, S] tokens: ours against torch; floor: mask read + fp32 write.
Memory is the peak allocated above the inputs (CUDA only). Timing: triton.testing.do_bench
(median) on CUDA; wall-clock median of a few runs on CPU, where the kernels run in Triton's
interpreter (the CPU table checks the command, it says nothing about speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

# torch, triton and the kernels are imported inside the functions: the CLI builds this parser for --help

# bench-only peers computing the log-prob part as a fused linear cross-entropy: impl, module, function, package
CROSS_ENTROPY_PEERS = {
    "liger": ("Liger FLCE", "liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy", "liger-kernel"),
    "cce": ("Cut Cross-Entropy", "cut_cross_entropy", "linear_cross_entropy", "cut-cross-entropy"),
}


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured implementation."""

    kernel: str
    shape: str
    impl: str
    ms: float | None  # None: not run (peer missing) or failed (see note)
    extra_gib: float | None
    floor_ms: float
    note: str = ""
    max_error: float | None = None  # max |log-prob error| against an fp32 reference, where measured


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench kernels`` options."""
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="T values (default: 8192 16384 on CUDA, 256 on CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="H (default 3584 on CUDA, 256 on CPU)")
    parser.add_argument("--vocab", type=int, default=None, help="V (default 152064 on CUDA, 4096 on CPU)")
    parser.add_argument("--seqs", type=int, default=None, help="B for the per-token kernels (default 256 on CUDA, 8 on CPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="S for the per-token kernels (default 4096 on CUDA, 256 on CPU)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--peers", nargs="+", default=["torch", "compile", "liger", "cce"],
                        help="peers to run beside ours (torch compile liger cce)")
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="measured bf16 matmul peak of the device")
    parser.add_argument("--peak-tbps", type=float, default=3.0, help="measured memory bandwidth of the device, TB/s")
    parser.add_argument("--out", help="also write the table (markdown) to this file")


def _measure(fn: Callable[[], object], device: str) -> tuple[float, float | None]:
    """(median ms, peak GiB allocated above what was allocated before) of ``fn``."""
    import torch

    if device == "cuda":
        import triton.testing

        fn()  # compile / autotune outside the timing
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before) / 2**30
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"), extra
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1], None


def _run(rows: list[Row], kernel: str, shape: str, impl: str, fn: Callable[[], object], device: str, floor_ms: float,
         note: str = "") -> None:
    import torch

    try:
        ms, extra = _measure(fn, device)
        rows.append(Row(kernel=kernel, shape=shape, impl=impl, ms=ms, extra_gib=extra, floor_ms=floor_ms, note=note))
    except Exception as err:  # a peer that fails at this shape is reported, not fatal
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append(Row(kernel=kernel, shape=shape, impl=impl, ms=None, extra_gib=None, floor_ms=floor_ms,
                        note=f"failed: {type(err).__name__}: {str(err)[:80]}"))


def _linear_rows(rows: list[Row], tokens: int, hidden: int, vocab: int, dtype, device: str, peers, peak_tflops: float) -> None:
    import torch

    from kernels.linear_logprob import fused_linear_logprobs_entropy
    from megatron_elo.loss.reference import linear_logprobs_and_entropy

    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, dtype=dtype, generator=gen) / hidden**0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=gen)
    grad_lp = torch.randn(tokens, device=device, generator=gen)
    grad_ent = torch.randn(tokens, device=device, generator=gen)
    shape = f"T={tokens} H={hidden} V={vocab} {str(dtype).removeprefix('torch.')}"
    floor = 6 * tokens * hidden * vocab / (peak_tflops * 1e12) * 1e3

    def fwd_bwd(op):
        def step():
            h.grad = w.grad = None
            lp, ent = op(h, w, targets)
            (lp * grad_lp + ent * grad_ent).sum().backward()
        return step

    name = "linear log-prob + entropy fwd+bwd"
    _run(rows, name, shape, "ours (triton)", fwd_bwd(fused_linear_logprobs_entropy), device, floor)
    with torch.no_grad():  # accuracy against fp32, chunked so the fp32 logits are never whole either
        reference = torch.cat([linear_logprobs_and_entropy(h[i:i + 1024].float(), w.float(), targets[i:i + 1024])[0]
                               for i in range(0, tokens, 1024)])
        errors = {impl: (op(h, w, targets)[0].float() - reference).abs().max().item()
                  for impl, op in (("ours (triton)", fused_linear_logprobs_entropy), ("torch eager", linear_logprobs_and_entropy))}
    rows[-1] = dataclasses.replace(rows[-1], max_error=errors["ours (triton)"])  # measured after timing: no extra memory in it
    if "torch" in peers:
        _run(rows, name, shape, "torch eager", fwd_bwd(linear_logprobs_and_entropy), device, floor, "materialises logits")
        rows[-1] = dataclasses.replace(rows[-1], max_error=errors["torch eager"])
    if "compile" in peers:
        _run(rows, name, shape, "torch.compile", fwd_bwd(torch.compile(linear_logprobs_and_entropy)), device, floor)
    ce_grad = torch.ones((), device=device)
    for key, (impl, module, function, package) in CROSS_ENTROPY_PEERS.items():
        if key not in peers:
            continue
        try:
            cross_entropy = getattr(importlib.import_module(module), function)
        except ImportError:
            rows.append(Row(kernel=name, shape=shape, impl=impl, ms=None, extra_gib=None, floor_ms=floor,
                            note=f"{package} not installed"))
            continue

        def cross_entropy_step(cross_entropy=cross_entropy):
            h.grad = w.grad = None
            cross_entropy(h, w, targets, reduction="sum").backward(ce_grad)
        _run(rows, name, shape, impl, cross_entropy_step, device, floor, "log-prob only, no entropy")


def _logit_read_rows(rows: list[Row], tokens: int, vocab: int, dtype, device: str, peers, peak_tbps: float) -> None:
    import torch

    from kernels.linear_logprob import _block_v, _logit_stats_kernel
    from megatron_elo.loss.reference import token_logprobs_and_entropy

    gen = torch.Generator(device=device).manual_seed(1)
    logits = torch.randn(tokens, vocab, device=device, dtype=dtype, generator=gen)
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=gen)
    stats = torch.empty(4, tokens, device=device)
    floor = logits.numel() * logits.element_size() / (peak_tbps * 1e12) * 1e3
    shape = f"T={tokens} V={vocab} {str(dtype).removeprefix('torch.')}"
    name = "log-prob + entropy stats from logits fwd"

    def ours():
        _logit_stats_kernel[(tokens,)](logits, targets, stats[0], stats[1], stats[2], stats[3], logits.stride(0), vocab, 0,
                                       BLOCK_V=_block_v(vocab))
    _run(rows, name, shape, "ours (triton)", ours, device, floor)
    if "torch" in peers:
        _run(rows, name, shape, "torch eager", lambda: token_logprobs_and_entropy(logits, targets), device, floor)
    if "compile" in peers:
        compiled = torch.compile(token_logprobs_and_entropy)
        _run(rows, name, shape, "torch.compile", lambda: compiled(logits, targets), device, floor)


def _per_token_rows(rows: list[Row], seqs: int, seq_len: int, device: str, peers, peak_tbps: float) -> None:
    import torch

    from kernels.advantage import token_advantages
    from kernels.policy_loss import fused_policy_loss
    from megatron_elo.loss.reference import (
        PolicyLossConfig,
        broadcast_to_tokens,
        group_advantages,
        policy_loss,
    )

    gen = torch.Generator(device=device).manual_seed(2)
    shape = f"B={seqs} S={seq_len} fp32"
    logp = (-torch.rand(seqs, seq_len, device=device, generator=gen)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(seqs, seq_len, device=device, generator=gen)
    ref = logp.detach() + 0.1 * torch.randn(seqs, seq_len, device=device, generator=gen)
    entropy = torch.rand(seqs, seq_len, device=device, generator=gen).requires_grad_()
    mask = torch.rand(seqs, seq_len, device=device, generator=gen) > 0.2
    advantages = torch.randn(seqs, device=device, generator=gen)
    config = PolicyLossConfig(kl_coef=0.01, entropy_coef=0.001)
    tokens = seqs * seq_len
    floor = tokens * (4 * 4 + 1 + 2 * 4) / (peak_tbps * 1e12) * 1e3  # read logp/old/ref/entropy/mask, write 2 grads
    name = "PG loss + KL + entropy fwd+bwd"

    def step(op, broadcast: bool):
        def run():
            adv = broadcast_to_tokens(advantages, mask) if broadcast else advantages
            loss, _ = op(logp, old, adv, mask, config=config, ref_logprobs=ref, entropy=entropy)
            torch.autograd.grad(loss, [logp, entropy])
        return run
    _run(rows, name, shape, "ours (triton)", step(fused_policy_loss, False), device, floor)
    if "torch" in peers:
        _run(rows, name, shape, "torch eager", step(policy_loss, True), device, floor, "incl. .item() stats")
    if "compile" in peers:
        _run(rows, name, shape, "torch.compile", step(torch.compile(policy_loss), True), device, floor)

    prompts, group = seqs // 8, 8
    rewards = torch.randint(0, 2, (prompts, group), device=device, generator=gen).float()
    valid = torch.rand(prompts, group, device=device, generator=gen) > 0.1
    mask = mask[:prompts * group]
    floor = prompts * group * seq_len * (1 + 4) / (peak_tbps * 1e12) * 1e3
    name = "advantage + token broadcast"
    _run(rows, name, shape, "ours (triton)", lambda: token_advantages(rewards, valid, mask, std_normalize=True), device, floor)
    if "torch" in peers:
        _run(rows, name, shape, "torch eager", lambda: broadcast_to_tokens(
            group_advantages(rewards, valid, std_normalize=True).reshape(-1), mask), device, floor)


def format_table(rows: list[Row], header: str) -> str:
    """Markdown table: time, speed relative to the floor, extra memory."""
    lines = [header, "", "| kernel | shape | implementation | ms | floor ms | floor / ms | extra GiB | max err vs fp32 | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ms = f"{r.ms:.2f}" if r.ms is not None else "-"
        efficiency = f"{r.floor_ms / r.ms:.0%}" if r.ms else "-"
        extra = f"{r.extra_gib:.2f}" if r.extra_gib is not None else "n/a"
        error = f"{r.max_error:.1e}" if r.max_error is not None else ""
        lines.append(f"| {r.kernel} | {r.shape} | {r.impl} | {ms} | {r.floor_ms:.3g} | {efficiency} | {extra} | {error} | {r.note} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Measure every kernel at the requested shapes and print (and optionally write) the table."""
    import datetime

    import torch

    from kernels._runtime import enable_interpreter_without_cuda
    from megatron_elo.utils.report import device_label, emit_table

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        enable_interpreter_without_cuda()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("bf16" if cuda else "fp32")]
    tokens_list = args.tokens or ([8192, 16384] if cuda else [256])
    hidden, vocab = args.hidden or (3584 if cuda else 256), args.vocab or (152064 if cuda else 4096)
    seqs, seq_len = args.seqs or (256 if cuda else 8), args.seq_len or (4096 if cuda else 256)
    peers = set(args.peers) if cuda else set(args.peers) & {"torch"}
    name = device_label(device, "Triton interpreter")
    import triton

    header = (f"{datetime.date.today()} · {name} · torch {torch.__version__} · triton {triton.__version__} · "
              f"floors at {args.peak_tflops:g} TFLOP/s and {args.peak_tbps:g} TB/s")
    rows: list[Row] = []
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("bench kernels", total=2 * len(tokens_list) + 1)
        for tokens in tokens_list:
            _linear_rows(rows, tokens, hidden, vocab, dtype, device, peers, args.peak_tflops)
            progress.advance(task)
            _logit_read_rows(rows, tokens, vocab, dtype, device, peers, args.peak_tbps)
            progress.advance(task)
        _per_token_rows(rows, seqs, seq_len, device, peers, args.peak_tbps)
        progress.advance(task)
    emit_table(format_table(rows, header), args.out)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
