"""Per-token log-probs and entropy from vocab-parallel logits, never gathering the vocabulary.

Each TP rank holds logits for its vocab slice [start, start + V/tp). The softmax statistics are
combined across the TP group (max, sum of exp, target logit, sum p*z) with all-reduces of [B, S]
tensors; the [B, S, V/tp] shard never leaves its rank. Padding rows of the vocabulary (ids >=
``true_vocab``) are excluded from the softmax.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    """Sum over the group in forward; identity in backward (every rank computes the same loss from
    the reduced value, so each input's gradient is the output's gradient, not tp times it)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return tensor
    return _AllReduceSumIdentityGrad.apply(tensor, group)


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, tp_group=None, vocab_start: int = 0,
                            true_vocab: int | None = None, with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) and entropy at every position, in fp32, differentiable w.r.t. ``logits``.

    logits: [..., V_local] this rank's vocab slice starting at ``vocab_start``; targets: [...] global
    token ids. tp_group: the tensor-parallel group (None: the slice is the whole vocabulary).
    true_vocab: ids at or above it are padding and get probability 0.
    Returns (logprobs [...], entropy [...] or None).
    """
    logits = logits.float()
    local_vocab = logits.shape[-1]
    if true_vocab is not None and vocab_start + local_vocab > true_vocab:
        ids = torch.arange(vocab_start, vocab_start + local_vocab, device=logits.device)
        logits = logits.masked_fill(ids >= true_vocab, float("-inf"))
    with torch.no_grad():  # the max shift cancels in the math: no gradient through it
        global_max = logits.max(dim=-1).values
        if tp_group is not None and dist.get_world_size(tp_group) > 1:
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = logits - global_max.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = _reduce_sum(exp.sum(dim=-1), tp_group)
    local_ids = targets.long() - vocab_start
    in_slice = (local_ids >= 0) & (local_ids < local_vocab)
    target_shifted = shifted.gather(-1, local_ids.clamp(0, local_vocab - 1).unsqueeze(-1)).squeeze(-1)
    target_shifted = _reduce_sum(torch.where(in_slice, target_shifted, torch.zeros_like(target_shifted)), tp_group)
    log_sum_exp = sum_exp.log()
    logprobs = target_shifted - log_sum_exp
    if not with_entropy:
        return logprobs, None
    # H = log Z - sum_j p_j z_j (shifted logits; the shift cancels). Padding ids: p = 0, z = -inf -> 0.
    weighted = torch.where(exp > 0, exp * shifted, torch.zeros_like(shifted)).sum(dim=-1)
    entropy = log_sum_exp - _reduce_sum(weighted, tp_group) / sum_exp
    return logprobs, entropy


def shift_to_tokens(per_position: torch.Tensor) -> torch.Tensor:
    """Values computed at position t for token t+1 ([B, S-1]) -> aligned with tokens ([B, S]),
    position 0 (no prediction) filled with 0."""
    return torch.cat([per_position.new_zeros(per_position.shape[0], 1), per_position], dim=1)
