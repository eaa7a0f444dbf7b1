"""Fused linear log-prob + entropy: per-token log p(target) and entropy from hidden states and the
(vocab-parallel) output weight, never materialising the [tokens x vocab] logits.

    logprobs, entropy = fused_linear_logprobs_entropy(hidden, weight, targets, tp_group=tp, vocab_start=s, true_vocab=V)
    # hidden [N, H] (replicated over TP), weight [V/tp, H] (this rank's vocab slice), targets [N] global ids
    # -> logprobs [N] fp32 (nats), entropy [N] fp32 (nats); differentiable w.r.t. hidden and weight

Reference: ``megatron_elo.loss.reference.linear_logprobs_and_entropy`` (materialises the logits) and,
for TP, ``megatron_elo.trainer.logprobs.vocab_parallel_logprobs``.

How (the structure of Liger-Kernel's fused linear cross-entropy, generalised to log-probs, entropy
and a vocab-sharded weight): tokens are processed in chunks of C; a chunk's logits [C, V/tp] come
from one GEMM (cuBLAS on GPU) and a Triton kernel reduces each row over vocab blocks with an online
logsumexp, keeping (max, sum exp, sum exp * shifted logit, target logit). Only those [N] statistics
are kept; across TP ranks they are combined with one MAX and one SUM all-reduce of [N]-sized
tensors. Backward recomputes each chunk's logits (one extra GEMM: 8*N*H*V flops in all against the
6*N*H*V floor), overwrites them in place with d loss / d logits, and turns them into grad_hidden
(summed over TP) and grad_weight with two GEMMs. Peak extra memory: one [C, V/tp] chunk plus
grad_weight. Padding rows of the vocabulary (ids >= true_vocab) get probability 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels._runtime import check_launchable, next_power_of_2

DEFAULT_CHUNK_ELEMENTS = 1 << 28  # logits per chunk: 512 MiB in bf16 (1024 tokens at V = 152064, 2048 at V/2)


@triton.jit
def _logit_stats_kernel(logits_ptr, targets_ptr, max_ptr, sumexp_ptr, weighted_ptr, target_logit_ptr,
                        row_stride, valid_cols, vocab_start, BLOCK_V: tl.constexpr):
    """One row of a logits chunk -> max m, sum exp(z - m), sum exp(z - m) * (z - m), z[target]."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    running_max = -1e30  # finite: exp(running_max - new_max) must be 0, not nan, before the first block
    sum_exp = 0.0
    weighted = 0.0
    for start in range(0, valid_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < valid_cols
        z = tl.load(row_ptr + cols, mask=inside, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        rescale = tl.exp(running_max - new_max)
        shifted = tl.where(inside, z - new_max, 0.0)  # not -inf: 0 * -inf would be nan
        p = tl.where(inside, tl.exp(shifted), 0.0)
        # sum p (z - m') over old terms = rescale * (weighted + sum_exp * (m - m'))
        weighted = rescale * (weighted + sum_exp * (running_max - new_max)) + tl.sum(p * shifted, axis=0)
        sum_exp = sum_exp * rescale + tl.sum(p, axis=0)
        running_max = new_max
    local_target = tl.load(targets_ptr + row) - vocab_start
    in_slice = (local_target >= 0) & (local_target < valid_cols)
    target_logit = tl.load(row_ptr + tl.where(in_slice, local_target, 0), mask=in_slice, other=0.0).to(tl.float32)
    tl.store(max_ptr + row, running_max)
    tl.store(sumexp_ptr + row, sum_exp)
    tl.store(weighted_ptr + row, weighted)
    tl.store(target_logit_ptr + row, target_logit)


@triton.jit
def _logit_grad_kernel(logits_ptr, targets_ptr, lse_ptr, entropy_ptr, grad_logprob_ptr, grad_entropy_ptr,
                       row_stride, local_cols, valid_cols, vocab_start, BLOCK_V: tl.constexpr):
    """Overwrite one row of recomputed logits with d loss / d z:
    g_lp * (onehot(target) - p) - g_ent * p * (log p + H)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    lse = tl.load(lse_ptr + row)
    entropy = tl.load(entropy_ptr + row)
    grad_logprob = tl.load(grad_logprob_ptr + row)
    grad_entropy = tl.load(grad_entropy_ptr + row)
    local_target = tl.load(targets_ptr + row) - vocab_start
    for start in range(0, local_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < local_cols
        valid = cols < valid_cols
        z = tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        log_p = z - lse
        p = tl.where(valid, tl.exp(log_p), 0.0)
        onehot = tl.where(cols == local_target, 1.0, 0.0)
        grad = grad_logprob * (onehot - p) - grad_entropy * tl.where(valid, p * (log_p + entropy), 0.0)
        tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=inside)


def _chunk_tokens(tokens: int, local_vocab: int, chunk_elements: int) -> int:
    return max(1, min(tokens, chunk_elements // max(local_vocab, 1)))


def _block_v(local_vocab: int) -> int:
    return min(4096, next_power_of_2(max(local_vocab, 16)))


def combine_vocab_stats(local_max: torch.Tensor, sum_exp: torch.Tensor, weighted: torch.Tensor,
                        target_logit: torch.Tensor, in_slice: torch.Tensor, tp_group=None):
    """Per-rank softmax statistics over vocab slices [N] -> (log Z, entropy, log p(target)), all [N] fp32.

    weighted = sum_j exp(z_j - m) (z_j - m) over the slice. Collective over ``tp_group`` (one MAX
    and one SUM all-reduce); None or a group of one: the slice is the whole vocabulary.
    """
    global_max = local_max.clone()
    distributed = tp_group is not None and dist.get_world_size(tp_group) > 1
    if distributed:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
    rescale = torch.exp(local_max - global_max)
    shift = local_max - global_max
    parts = torch.stack([sum_exp * rescale,
                         torch.where(sum_exp > 0, rescale * (weighted + sum_exp * shift), torch.zeros_like(weighted)),
                         torch.where(in_slice, target_logit, torch.zeros_like(target_logit))])
    if distributed:
        dist.all_reduce(parts, group=tp_group)
    total_exp, total_weighted, target = parts
    log_total = total_exp.log()
    lse = global_max + log_total
    return lse, log_total - total_weighted / total_exp, target - lse


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, tp_group, vocab_start, valid_cols, chunk_elements):
        tokens = hidden.shape[0]
        local_vocab = weight.shape[0]
        stats = torch.empty(4, tokens, dtype=torch.float32, device=hidden.device)  # max, sum exp, weighted, target
        chunk = _chunk_tokens(tokens, local_vocab, chunk_elements)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            logits = hidden[start:end] @ weight.T  # [C, V/tp] in the compute dtype
            _logit_stats_kernel[(end - start,)](
                logits, targets[start:end], stats[0, start:end], stats[1, start:end], stats[2, start:end],
                stats[3, start:end], logits.stride(0), valid_cols, vocab_start, BLOCK_V=_block_v(local_vocab))
        local_ids = targets - vocab_start
        in_slice = (local_ids >= 0) & (local_ids < valid_cols)
        lse, entropy, logprobs = combine_vocab_stats(stats[0], stats[1], stats[2], stats[3], in_slice, tp_group)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.tp_group, ctx.vocab_start, ctx.valid_cols, ctx.chunk = tp_group, vocab_start, valid_cols, chunk
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        tokens, local_vocab = hidden.shape[0], weight.shape[0]
        zeros = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
        grad_logprobs = zeros if grad_logprobs is None else grad_logprobs.float().contiguous()
        grad_entropy = zeros if grad_entropy is None else grad_entropy.float().contiguous()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, tokens, ctx.chunk):
            end = min(start + ctx.chunk, tokens)
            hidden_chunk = hidden[start:end]
            logits = hidden_chunk @ weight.T  # recomputed, then overwritten with d loss / d logits
            _logit_grad_kernel[(end - start,)](
                logits, targets[start:end], lse[start:end], entropy[start:end], grad_logprobs[start:end],
                grad_entropy[start:end], logits.stride(0), local_vocab, ctx.valid_cols, ctx.vocab_start,
                BLOCK_V=_block_v(local_vocab))
            torch.matmul(logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(logits.T, hidden_chunk)
        if ctx.tp_group is not None and dist.get_world_size(ctx.tp_group) > 1:
            dist.all_reduce(grad_hidden, group=ctx.tp_group)  # each rank holds its vocab slice's share
        return grad_hidden, grad_weight, None, None, None, None, None


def fused_linear_logprobs_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, tp_group=None,
                                  vocab_start: int = 0, true_vocab: int | None = None,
                                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy at each of N positions, both [N] fp32, from hidden [N, H] and this
    rank's output-weight slice [V/tp, H] (rows are vocab ids vocab_start ...).

    tp_group: the tensor-parallel group over which the vocabulary is split (None: ``weight`` is the
    whole vocabulary); hidden must be identical on its ranks, and its gradient is summed over them.
    true_vocab: ids at or above it are padding rows (probability 0). chunk_elements bounds the
    logits held at once (tokens per chunk = chunk_elements // (V/tp)). Collective when tp_group has
    more than one rank: every rank calls it with the same N.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N] = [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    check_launchable(hidden, weight, targets)
    local_vocab = weight.shape[0]
    valid_cols = local_vocab if true_vocab is None else max(0, min(local_vocab, true_vocab - vocab_start))
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty + hidden.sum() * 0, empty  # keeps the graph connected
    return _FusedLinearLogprobs.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous().long(), tp_group,
                                      vocab_start, valid_cols, chunk_elements)
