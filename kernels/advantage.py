"""Win/loss advantage kernel: per-prompt group normalisation fused with the broadcast onto tokens.

    seq_adv, token_adv = token_advantages(rewards, valid, response_mask, std_normalize=True)
    # rewards [P, n] float (1 win / 0 loss / tie reward), valid [P, n] bool (False: game dropped),
    # response_mask [P*n, T] bool -> seq_adv [P*n] fp32, token_adv [P*n, T] fp32

Reference: ``megatron_elo.loss.reference.group_advantages`` then ``broadcast_to_tokens``. One
program per sequence: it loads its group's n rewards (n is small), computes the mean and the
unbiased std of the valid ones, and writes its advantage onto its response tokens; nothing of size
[P, n] is staged in memory between the two steps. Bandwidth-bound: reads the mask, writes [B, T] fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._runtime import check_launchable, next_power_of_2


@triton.jit
def _token_advantage_kernel(rewards_ptr, valid_ptr, mask_ptr, seq_adv_ptr, token_adv_ptr,
                            group_size, seq_len, mask_row_stride, out_row_stride, eps,
                            STD_NORMALIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    group_start = (seq // group_size) * group_size
    members = tl.arange(0, BLOCK_N)
    in_group = members < group_size
    rewards = tl.load(rewards_ptr + group_start + members, mask=in_group, other=0.0).to(tl.float32)
    valid = tl.load(valid_ptr + group_start + members, mask=in_group, other=0).to(tl.float32)
    count = tl.sum(valid, axis=0)
    mean = tl.sum(rewards * valid, axis=0) / tl.maximum(count, 1.0)
    own_reward = tl.load(rewards_ptr + seq).to(tl.float32)
    own_valid = tl.load(valid_ptr + seq).to(tl.float32)
    advantage = (own_reward - mean) * own_valid
    if STD_NORMALIZE:
        centred = (rewards - mean) * valid
        variance = tl.sum(centred * centred, axis=0) / tl.maximum(count - 1.0, 1.0)
        advantage = advantage / (tl.sqrt(variance) + eps)
    advantage = tl.where(count >= 2.0, advantage, 0.0)  # nothing to compare against in the group
    tl.store(seq_adv_ptr + seq, advantage)
    for start in range(0, seq_len, BLOCK_T):
        cols = start + tl.arange(0, BLOCK_T)
        inside = cols < seq_len
        response = tl.load(mask_ptr + seq * mask_row_stride + cols, mask=inside, other=0).to(tl.float32)
        tl.store(token_adv_ptr + seq * out_row_stride + cols, advantage * response, mask=inside)


def token_advantages(rewards: torch.Tensor, valid: torch.Tensor, response_mask: torch.Tensor, *,
                     std_normalize: bool, eps: float = 1e-6, block_t: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of every sequence and their broadcast onto its response tokens.

    rewards [P, n], valid [P, n] bool, response_mask [P*n, T] (bool or 0/1); sequence b belongs to
    prompt b // n. Same math as ``group_advantages``: (r - mean) / (unbiased std + eps) over the
    group's valid samples (centring only when ``std_normalize`` is False); invalid samples and groups
    with fewer than two valid samples get 0. Returns (seq_adv [P*n] fp32, token_adv [P*n, T] fp32).
    """
    if rewards.dim() != 2 or rewards.shape != valid.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and valid {tuple(valid.shape)} must both be [P, n]")
    prompts, group_size = rewards.shape
    if response_mask.dim() != 2 or response_mask.shape[0] != prompts * group_size:
        raise ValueError(f"response_mask must be [P*n, T] = [{prompts * group_size}, T], got {tuple(response_mask.shape)}")
    check_launchable(rewards, valid, response_mask)
    rewards = rewards.contiguous().float()
    valid = valid.contiguous().to(torch.int8)
    mask = response_mask.contiguous()
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    batch, seq_len = mask.shape
    seq_adv = torch.empty(batch, dtype=torch.float32, device=rewards.device)
    token_adv = torch.empty(batch, seq_len, dtype=torch.float32, device=rewards.device)
    if batch == 0:
        return seq_adv, token_adv
    _token_advantage_kernel[(batch,)](
        rewards, valid, mask, seq_adv, token_adv, group_size, seq_len, mask.stride(0), token_adv.stride(0), eps,
        STD_NORMALIZE=std_normalize, BLOCK_N=next_power_of_2(group_size),
        BLOCK_T=min(block_t, next_power_of_2(max(seq_len, 1))))
    return seq_adv, token_adv
