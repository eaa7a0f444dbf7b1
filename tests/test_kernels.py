"""Triton kernels against their fp32 torch references (Triton's interpreter on CPU, compiled on GPU):
odd sizes, all-zero masks, a single token, vocab not a multiple of the block, TP = 2 over gloo;
bf16 at larger shapes on the GPU only (bf16 tl.dot / casts are not faithful in the interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_elo.loss.reference import (
    PolicyLossConfig,
    broadcast_to_tokens,
    group_advantages,
    linear_logprobs_and_entropy,
    policy_loss,
)
from megatron_elo.parallel.spawn import run_distributed

pytest.importorskip("triton")
from kernels import fused_linear_logprobs_entropy, fused_policy_loss, token_advantages  # noqa: E402

# Where the kernels run: compiled on CUDA when present, else Triton's interpreter on CPU tensors
# (conftest turns it on; with CUDA present it is off, so CPU tensors would be refused).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- advantage


@pytest.mark.parametrize("prompts, group, seq", [(1, 1, 1), (3, 5, 37), (4, 8, 130), (2, 3, 1)])
@pytest.mark.parametrize("std_normalize", [True, False])
def test_token_advantages_match_reference(prompts, group, seq, std_normalize):
    gen = torch.Generator().manual_seed(prompts * 100 + group)
    rewards = torch.randint(0, 3, (prompts, group), generator=gen).float() / 2  # win 1, tie 0.5, loss 0
    valid = torch.rand(prompts, group, generator=gen) > 0.25
    valid[0] = False  # a group with every game dropped
    mask = torch.rand(prompts * group, seq, generator=gen) > 0.4
    seq_adv, token_adv = token_advantages(rewards.to(DEVICE), valid.to(DEVICE), mask.to(DEVICE), std_normalize=std_normalize,
                                          block_t=32)
    expected = group_advantages(rewards, valid, std_normalize=std_normalize).reshape(-1)
    torch.testing.assert_close(seq_adv.cpu(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(token_adv.cpu(), broadcast_to_tokens(expected, mask), atol=1e-6, rtol=1e-6)
    assert torch.equal(seq_adv[:group].cpu(), torch.zeros(group))


def test_token_advantages_hand_values_and_bad_shapes():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.5]], device=DEVICE)
    valid = torch.tensor([[True, True, True, True], [True, False, False, False]], device=DEVICE)
    seq_adv, token_adv = token_advantages(rewards, valid, torch.ones(8, 2, dtype=torch.bool, device=DEVICE),
                                          std_normalize=True, eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1 has one valid game: nothing to compare against
    expected = torch.tensor([1, -1, 1, -1, 0, 0, 0, 0]) * 0.5 / (1 / 3) ** 0.5
    torch.testing.assert_close(seq_adv.cpu(), expected.float())
    assert torch.equal(token_adv[:, 0], token_adv[:, 1])
    with pytest.raises(ValueError, match=r"\[P\*n, T\]"):
        token_advantages(rewards, valid, torch.ones(7, 2, device=DEVICE), std_normalize=True)
    with pytest.raises(ValueError, match=r"must both be \[P, n\]"):
        token_advantages(rewards.reshape(-1), valid.reshape(-1), torch.ones(8, 2, device=DEVICE), std_normalize=True)


# ---------------------------------------------------------------- fused linear log-prob + entropy


def _linear_case(tokens: int, hidden: int, vocab: int, *, seed: int, scale: float = 1.0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(tokens, hidden, generator=gen) * scale).to(device=device, dtype=dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device=device, dtype=dtype)
    grad_lp, grad_ent = torch.randn(tokens, generator=gen).to(device), torch.randn(tokens, generator=gen).to(device)
    return h, w, grad_lp, grad_ent


def _reference_linear(h, w, targets, grad_lp, grad_ent, true_vocab):
    """fp32 reference values and grads (padding rows of w get zero gradient)."""
    h = h.detach().float().requires_grad_()
    w = w.detach().float().requires_grad_()
    lp, ent = linear_logprobs_and_entropy(h, w[:true_vocab], targets)
    (lp * grad_lp + ent * grad_ent).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("tokens, hidden, vocab, true_vocab, chunk_rows", [
    (1, 8, 16, 16, 4),        # a single token
    (37, 24, 101, 90, 10),    # odd sizes, padded vocab, several token chunks
    (50, 16, 300, 300, 64),   # vocab over one block of the CPU test (BLOCK_V = 256 -> two blocks)
])
def test_fused_linear_logprobs_match_reference(tokens, hidden, vocab, true_vocab, chunk_rows):
    h, w, grad_lp, grad_ent = _linear_case(tokens, hidden, vocab, seed=tokens, scale=3.0, device=DEVICE)
    targets = torch.randint(0, true_vocab, (tokens,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    h_k, w_k = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp, ent = fused_linear_logprobs_entropy(h_k, w_k, targets, true_vocab=true_vocab, chunk_elements=chunk_rows * vocab)
    (lp * grad_lp + ent * grad_ent).sum().backward()
    ref_lp, ref_ent, ref_gh, ref_gw = _reference_linear(h, w, targets, grad_lp, grad_ent, true_vocab)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_k.grad, ref_gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_k.grad, ref_gw, atol=1e-5, rtol=1e-5)
    assert torch.equal(w_k.grad[true_vocab:], torch.zeros_like(w_k.grad[true_vocab:]))


def test_fused_linear_only_logprob_gradient_and_bad_input():
    h, w, _, _ = _linear_case(9, 8, 40, seed=3, device=DEVICE)
    targets = torch.arange(9, device=DEVICE) * 4
    h_k = h.clone().requires_grad_()
    lp, _ = fused_linear_logprobs_entropy(h_k, w, targets)
    lp.sum().backward()  # entropy unused: its incoming gradient is None
    h_r = h.clone().requires_grad_()
    linear_logprobs_and_entropy(h_r, w, targets)[0].sum().backward()
    torch.testing.assert_close(h_k.grad, h_r.grad, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"hidden must be \[N, H\] and weight \[V, H\]"):
        fused_linear_logprobs_entropy(h, w[:, :4], targets)
    with pytest.raises(ValueError, match=r"targets must be \[N\]"):
        fused_linear_logprobs_entropy(h, w, targets[:3])
    with pytest.raises(ValueError, match="share a dtype"):
        fused_linear_logprobs_entropy(h.double(), w, targets)


def _tp_linear(rank, world_size, h, w, targets, grad_lp, grad_ent, true_vocab, device):
    import torch.distributed as dist

    h, w, targets, grad_lp, grad_ent = (t.to(device) for t in (h, w, targets, grad_lp, grad_ent))
    local = w.shape[0] // world_size
    w_local = w[rank * local:(rank + 1) * local].clone().requires_grad_()
    h_local = h.clone().requires_grad_()
    lp, ent = fused_linear_logprobs_entropy(h_local, w_local, targets, tp_group=dist.group.WORLD, vocab_start=rank * local,
                                            true_vocab=true_vocab, chunk_elements=7 * local)
    (lp * grad_lp + ent * grad_ent).sum().backward()
    return lp.detach().cpu(), ent.detach().cpu(), h_local.grad.cpu(), w_local.grad.cpu()


def test_fused_linear_logprobs_vocab_parallel_tp2():
    """Two ranks each holding half the (padded) vocabulary give the full-vocabulary values and grads;
    rank 1's slice is partly padding."""
    tokens, hidden, vocab, true_vocab = 23, 16, 96, 70
    h, w, grad_lp, grad_ent = _linear_case(tokens, hidden, vocab, seed=5, scale=2.0)
    targets = torch.randint(0, true_vocab, (tokens,), generator=torch.Generator().manual_seed(2))
    ref_lp, ref_ent, ref_gh, ref_gw = _reference_linear(h, w, targets, grad_lp, grad_ent, true_vocab)
    results = run_distributed(_tp_linear, 2, h, w, targets, grad_lp, grad_ent, true_vocab, DEVICE)  # gloo: CPU or CUDA
    for lp, ent, grad_h, _ in results:
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_h, ref_gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[3] for r in results]), ref_gw, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- policy loss


def _loss_case(batch: int, seq: int, *, seed: int, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, seq, generator=gen) * 3
    old = logp + 0.3 * torch.randn(batch, seq, generator=gen)  # some ratios leave the clip range
    ref = logp + 0.2 * torch.randn(batch, seq, generator=gen)
    entropy = torch.rand(batch, seq, generator=gen) * 2
    mask = torch.rand(batch, seq, generator=gen) > 0.3
    advantages = torch.randn(batch, generator=gen)
    return [t.to(device) for t in (logp, old, ref, entropy, mask, advantages)]


CONFIGS = [
    PolicyLossConfig(),
    PolicyLossConfig(kl_coef=0.1, kl_estimator="k1", entropy_coef=0.01),
    PolicyLossConfig(kl_coef=0.05, kl_estimator="k3", loss_agg="seq_mean", clip_low=0.1, clip_high=0.1),
    PolicyLossConfig(entropy_coef=0.02, loss_agg="seq_mean"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.loss_agg}-kl{c.kl_coef}{c.kl_estimator}-ent{c.entropy_coef}")
@pytest.mark.parametrize("batch, seq, normalizer", [(1, 1, None), (5, 37, None), (6, 130, 311.0)])
def test_fused_policy_loss_matches_reference(config, batch, seq, normalizer):
    logp, old, ref, entropy, mask, advantages = _loss_case(batch, seq, seed=batch * seq, device=DEVICE)
    mask[0, 0] = True  # at least one token
    inputs = [logp.clone().requires_grad_(), entropy.clone().requires_grad_()]
    loss, stats = fused_policy_loss(inputs[0], old, advantages, mask, config=config, ref_logprobs=ref, entropy=inputs[1],
                                    normalizer=normalizer, block_t=32)
    ref_inputs = [logp.clone().requires_grad_(), entropy.clone().requires_grad_()]
    ref_loss, ref_stats = policy_loss(ref_inputs[0], old, broadcast_to_tokens(advantages, mask), mask, config=config,
                                      ref_logprobs=ref, entropy=ref_inputs[1], normalizer=normalizer)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs, allow_unused=True)
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(grads[1] if grads[1] is not None else torch.zeros_like(entropy),
                               ref_grads[1] if ref_grads[1] is not None else torch.zeros_like(entropy), atol=1e-7, rtol=1e-5)
    for field in ("pg_loss", "kl", "entropy", "clip_fraction", "ratio_mean"):
        assert getattr(stats, field) == pytest.approx(getattr(ref_stats, field), rel=1e-5, abs=1e-6), field


def test_fused_policy_loss_all_masked_and_bad_input():
    logp, old, ref, entropy, mask, advantages = _loss_case(3, 10, seed=0, device=DEVICE)
    logp.requires_grad_()
    loss, stats = fused_policy_loss(logp, old, advantages, torch.zeros_like(mask), config=CONFIGS[1], ref_logprobs=ref,
                                    entropy=entropy)
    assert loss.item() == 0.0 and stats.clip_fraction == 0.0
    assert torch.equal(torch.autograd.grad(loss, logp)[0], torch.zeros_like(logp))
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logprobs"):
        fused_policy_loss(logp, old, advantages, mask, config=CONFIGS[1], entropy=entropy)
    with pytest.raises(ValueError, match="entropy_coef > 0 needs"):
        fused_policy_loss(logp, old, advantages, mask, config=CONFIGS[1], ref_logprobs=ref)
    with pytest.raises(ValueError, match=r"seq_advantages must be \[B\]"):
        fused_policy_loss(logp, old, broadcast_to_tokens(advantages, mask), mask, config=CONFIGS[0])
    with pytest.raises(ValueError, match="must all be"):
        fused_policy_loss(logp, old[:, :4], advantages, mask, config=CONFIGS[0])


# ---------------------------------------------------------------- compiled for the H100 (no GPU needed)


def test_kernels_compile_for_h100_without_a_gpu():
    """The interpreter forgives what the compiler refuses (loop-carried types, dtypes): compile every
    kernel variant to an sm_90 cubin with Triton's bundled ptxas, in a process without the interpreter."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton build has no bundled ptxas")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "kernels.compile_check"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.endswith(" ok") for line in done.stdout.splitlines()) == 8, done.stdout


# ---------------------------------------------------------------- GPU: bf16 at larger shapes


@pytest.mark.gpu
def test_fused_linear_bf16_error_no_larger_than_torch_bf16():
    """At bf16 the kernel's error against fp32 is at most torch eager bf16's error plus a small margin."""
    tokens, hidden, vocab = 4096, 1024, 32000
    h, w, grad_lp, grad_ent = _linear_case(tokens, hidden, vocab, seed=0, scale=2.0, dtype=torch.bfloat16, device="cuda")
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    ref_lp, ref_ent, ref_gh, ref_gw = _reference_linear(h, w, targets, grad_lp, grad_ent, vocab)
    h_t, w_t = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp_t, ent_t = linear_logprobs_and_entropy(h_t, w_t, targets)  # torch: bf16 logits, fp32 softmax
    (lp_t * grad_lp + ent_t * grad_ent).sum().backward()
    h_k, w_k = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp_k, ent_k = fused_linear_logprobs_entropy(h_k, w_k, targets, chunk_elements=1024 * vocab)
    (lp_k * grad_lp + ent_k * grad_ent).sum().backward()
    for kernel, torch_value, reference in ((lp_k, lp_t, ref_lp), (ent_k, ent_t, ref_ent), (h_k.grad, h_t.grad, ref_gh),
                                           (w_k.grad, w_t.grad, ref_gw)):
        kernel_err = (kernel.float() - reference).abs().max().item()
        torch_err = (torch_value.float() - reference).abs().max().item()
        assert kernel_err <= 1.5 * torch_err + 1e-3 * reference.abs().max().item(), (kernel_err, torch_err)


# ---------------------------------------------------------------- the benchmark command


def test_bench_kernels_prints_and_writes_every_row(tmp_path):
    from megatron_elo.cli import main

    out = tmp_path / "bench.md"
    assert main(["bench", "kernels", "--tokens", "8", "--hidden", "16", "--vocab", "50", "--seqs", "8", "--seq-len", "8",
                 "--peers", "torch", "--out", str(out)]) == 0
    table = out.read_text()
    for kernel in ("linear log-prob + entropy fwd+bwd", "log-prob + entropy stats from logits fwd",
                   "PG loss + KL + entropy fwd+bwd", "advantage + token broadcast"):
        assert table.count(f"| {kernel} |") == 2, kernel  # ours and torch eager (the CPU peers)
    assert "failed" not in table


@pytest.mark.parametrize("estimator", ["k3", "k1"])
def test_extreme_logprobs_at_masked_positions_never_make_nan(estimator):
    """Prompt and padding positions carry reference log-prob 0 and whatever the model gives them: a
    log-prob of -1000 there made exp(ref - logp) = inf, and inf * mask 0 = NaN in the loss and the
    gradient (torch reference and fused kernel alike); likewise an old log-prob of -1000 there in the PPO
    ratio. Both must give what they give with benign values there."""
    gen = torch.Generator().manual_seed(3)
    logp, old = -torch.rand(3, 9, generator=gen) * 2, -torch.rand(3, 9, generator=gen) * 2
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, 4:] = True
    ref = torch.where(mask, -torch.rand(3, 9, generator=gen), torch.zeros(3, 9))  # 0 off the responses, as the loop gives
    advantages = torch.tensor([1.0, -0.5, 0.25])
    config = PolicyLossConfig(kl_coef=0.1, kl_estimator=estimator)
    extreme = torch.where(mask, logp, torch.full_like(logp, -1000.0))
    results = {}
    for name, values, olds in (("benign", logp, old), ("extreme", extreme, old),
                               ("extreme_old", logp, torch.where(mask, old, torch.full_like(old, -1000.0)))):
        for impl in ("torch", "fused"):
            leaf = values.clone().to(DEVICE).requires_grad_(True)
            if impl == "torch":
                loss, _ = policy_loss(leaf, olds.to(DEVICE), broadcast_to_tokens(advantages, mask).to(DEVICE), mask.to(DEVICE),
                                      config=config, ref_logprobs=ref.to(DEVICE))
            else:
                loss, _ = fused_policy_loss(leaf, olds.to(DEVICE), advantages.to(DEVICE), mask.to(DEVICE), config=config,
                                            ref_logprobs=ref.to(DEVICE))
            loss.backward()
            results[name, impl] = (loss.detach().cpu(), leaf.grad.cpu())
    for (name, impl), (loss, grad) in results.items():
        if name == "benign":
            continue
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), impl
        assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
        torch.testing.assert_close(loss, results["benign", impl][0], rtol=0, atol=0)
        torch.testing.assert_close(grad, results["benign", impl][1], rtol=0, atol=0)
