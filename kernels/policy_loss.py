"""Fused clipped policy-gradient loss: ratio, low/high clipping, KL to the reference (k1/k3),
entropy bonus, masks and token / sequence aggregation in one pass, forward and backward.

    loss, stats = fused_policy_loss(logprobs, old_logprobs, seq_advantages, mask, config=cfg,
                                    ref_logprobs=ref, entropy=ent, normalizer=n)
    # logprobs / old_logprobs / ref_logprobs / entropy / mask [B, T]; seq_advantages [B] (one per
    # sequence, broadcast onto its tokens inside the kernel) -> scalar loss, PolicyLossStats

Reference: ``megatron_elo.loss.reference.policy_loss`` with ``broadcast_to_tokens(seq_advantages, mask)``.
The loss is a weighted sum of per-token terms (weights: mask / normalizer, and / tokens in the
sequence for seq_mean), so its gradient w.r.t. each token's log-prob and entropy is known in the
forward pass: the kernel writes it there, and backward only scales it by the incoming gradient.
One program per sequence reads every per-token input once (the mask twice for seq_mean) and writes
the per-sequence partial sums of the loss and the statistics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._runtime import check_launchable, next_power_of_2
from megatron_elo.loss.reference import PolicyLossConfig, PolicyLossStats, default_normalizer

# columns of the per-sequence partial sums
_LOSS, _PG, _KL, _ENTROPY, _CLIPPED, _RATIO, _TOKENS = range(7)
_SUMS = 8


@triton.jit
def _policy_loss_kernel(logprobs_ptr, old_ptr, ref_ptr, entropy_ptr, mask_ptr, adv_ptr,
                        grad_logprobs_ptr, grad_entropy_ptr, sums_ptr,
                        seq_len, row_stride, inv_normalizer, clip_low, clip_high, kl_coef, entropy_coef,
                        HAS_KL: tl.constexpr, KL_K3: tl.constexpr, HAS_ENTROPY: tl.constexpr,
                        SEQ_MEAN: tl.constexpr, BLOCK_T: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    base = seq * row_stride
    row_weight = inv_normalizer
    if SEQ_MEAN:
        count = 0.0
        for start in range(0, seq_len, BLOCK_T):
            cols = start + tl.arange(0, BLOCK_T)
            count += tl.sum(tl.load(mask_ptr + base + cols, mask=cols < seq_len, other=0).to(tl.float32), axis=0)
        row_weight = inv_normalizer / tl.maximum(count, 1.0)
    advantage = tl.load(adv_ptr + seq).to(tl.float32)
    loss_sum = 0.0
    pg_sum = 0.0
    kl_sum = 0.0
    entropy_sum = 0.0
    clipped_sum = 0.0
    ratio_sum = 0.0
    token_sum = 0.0
    for start in range(0, seq_len, BLOCK_T):
        cols = start + tl.arange(0, BLOCK_T)
        inside = cols < seq_len
        active = tl.load(mask_ptr + base + cols, mask=inside, other=0) != 0
        logp = tl.load(logprobs_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        old = tl.load(old_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        ratio = tl.exp(tl.where(active, logp - old, 0.0))  # off the mask exp() may overflow: inf * 0 weight = NaN
        unclipped = -advantage * ratio
        clipped = -advantage * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        took_clip = clipped > unclipped
        surrogate = tl.maximum(unclipped, clipped)
        per_token = surrogate
        grad = tl.where(took_clip, 0.0, -advantage * ratio)  # the clipped branch is constant in logp
        kl = tl.zeros_like(logp)
        if HAS_KL:
            ref = tl.load(ref_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
            log_ratio = tl.where(active, ref - logp, 0.0)
            if KL_K3:
                kl = tl.exp(log_ratio) - log_ratio - 1.0
                grad += kl_coef * (1.0 - tl.exp(log_ratio))
            else:
                kl = -log_ratio
                grad += kl_coef
            per_token += kl_coef * kl
        entropy = tl.zeros_like(logp)
        if HAS_ENTROPY:
            entropy = tl.load(entropy_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
            per_token -= entropy_coef * entropy
        weight = tl.where(active, row_weight, 0.0)
        tl.store(grad_logprobs_ptr + base + cols, grad * weight, mask=inside)
        if HAS_ENTROPY:
            tl.store(grad_entropy_ptr + base + cols, -entropy_coef * weight, mask=inside)
        loss_sum += tl.sum(tl.where(active, per_token * weight, 0.0), axis=0)
        pg_sum += tl.sum(tl.where(active, surrogate * weight, 0.0), axis=0)
        kl_sum += tl.sum(tl.where(active, kl * weight, 0.0), axis=0)
        entropy_sum += tl.sum(tl.where(active, entropy * weight, 0.0), axis=0)
        clipped_sum += tl.sum(tl.where(active & took_clip, 1.0, 0.0), axis=0)
        ratio_sum += tl.sum(tl.where(active, ratio, 0.0), axis=0)
        token_sum += tl.sum(tl.where(active, 1.0, 0.0), axis=0)
    out = sums_ptr + seq * 8
    tl.store(out + 0, loss_sum)
    tl.store(out + 1, pg_sum)
    tl.store(out + 2, kl_sum)
    tl.store(out + 3, entropy_sum)
    tl.store(out + 4, clipped_sum)
    tl.store(out + 5, ratio_sum)
    tl.store(out + 6, token_sum)


class _PrecomputedGradLoss(torch.autograd.Function):
    """A scalar whose gradients w.r.t. (logprobs, entropy) were computed with it."""

    @staticmethod
    def forward(ctx, loss, logprobs, entropy, grad_logprobs, grad_entropy):
        ctx.save_for_backward(grad_logprobs, grad_entropy)
        ctx.dtypes = (logprobs.dtype, entropy.dtype if entropy is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_logprobs, grad_entropy = ctx.saved_tensors
        lp_dtype, ent_dtype = ctx.dtypes
        grad_lp = (grad_logprobs * grad_output).to(lp_dtype)
        grad_ent = (grad_entropy * grad_output).to(ent_dtype) if ent_dtype is not None and grad_entropy.numel() else None
        return None, grad_lp, grad_ent, None, None


def fused_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, seq_advantages: torch.Tensor,
                      mask: torch.Tensor, *, config: PolicyLossConfig, ref_logprobs: torch.Tensor | None = None,
                      entropy: torch.Tensor | None = None, normalizer: float | None = None,
                      block_t: int = 1024) -> tuple[torch.Tensor, PolicyLossStats]:
    """Same loss and stats as ``reference.policy_loss`` (see the module docstring for shapes).

    Differentiable w.r.t. ``logprobs`` and ``entropy``. ``normalizer``: the global token (token_mean)
    or sequence (seq_mean) count when the batch is split into micro-batches or DP shards.
    """
    if logprobs.dim() != 2 or any(t is not None and t.shape != logprobs.shape for t in (old_logprobs, mask, ref_logprobs, entropy)):
        raise ValueError("logprobs, old_logprobs, mask (and ref_logprobs, entropy when given) must all be [B, T]")
    if seq_advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"seq_advantages must be [B] = [{logprobs.shape[0]}] (one per sequence), got {tuple(seq_advantages.shape)}")
    if config.loss_agg not in ("token_mean", "seq_mean"):
        raise ValueError(f"loss aggregation must be 'token_mean' or 'seq_mean', got {config.loss_agg!r}")
    if config.kl_estimator not in ("k1", "k3"):
        raise ValueError(f"kl estimator must be 'k1' or 'k3', got {config.kl_estimator!r}")
    has_kl, has_entropy_term = config.kl_coef > 0, config.entropy_coef > 0
    if has_kl and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs (the frozen reference model's log-probs)")
    if has_entropy_term and entropy is None:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")
    check_launchable(logprobs, old_logprobs, seq_advantages, mask, ref_logprobs, entropy)
    batch, seq_len = logprobs.shape
    if normalizer is None:
        normalizer = default_normalizer(mask, config.loss_agg)
    flat_mask = mask.contiguous()
    flat_mask = flat_mask.view(torch.uint8) if flat_mask.dtype == torch.bool else flat_mask
    logprobs_c = logprobs.contiguous()
    entropy_in = entropy.contiguous() if entropy is not None else None
    grad_logprobs = torch.empty(batch, seq_len, dtype=torch.float32, device=logprobs.device)
    grad_entropy = torch.empty_like(grad_logprobs) if entropy is not None else grad_logprobs.new_empty(0)
    sums = torch.zeros(batch, _SUMS, dtype=torch.float32, device=logprobs.device)
    if batch and seq_len:
        _policy_loss_kernel[(batch,)](
            logprobs_c, old_logprobs.contiguous(), ref_logprobs.contiguous() if has_kl else logprobs_c,
            entropy_in if entropy_in is not None else logprobs_c, flat_mask, seq_advantages.contiguous().float(),
            grad_logprobs, grad_entropy if entropy is not None else grad_logprobs, sums,
            seq_len, seq_len, 1.0 / max(float(normalizer), 1.0), config.clip_low, config.clip_high,
            config.kl_coef, config.entropy_coef,
            HAS_KL=has_kl, KL_K3=config.kl_estimator == "k3", HAS_ENTROPY=entropy is not None,
            SEQ_MEAN=config.loss_agg == "seq_mean", BLOCK_T=min(block_t, next_power_of_2(seq_len)))
    if entropy is not None and not has_entropy_term:
        grad_entropy.zero_()  # entropy logged only: the kernel wrote -0 * weight
    totals = sums.sum(dim=0).tolist()
    tokens = max(totals[_TOKENS], 1.0)
    stats = PolicyLossStats(pg_loss=totals[_PG], kl=totals[_KL],
                            entropy=totals[_ENTROPY] if entropy is not None else float("nan"),
                            clip_fraction=totals[_CLIPPED] / tokens, ratio_mean=totals[_RATIO] / tokens)
    loss = _PrecomputedGradLoss.apply(sums[:, _LOSS].sum(), logprobs, entropy, grad_logprobs, grad_entropy)
    return loss, stats
