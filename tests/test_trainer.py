"""The train step: same loss and gradients across TP / DP / PP layouts (2 processes over gloo),
hand-checked LR schedule, bit-exact resume, resume under a different DP size."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.config.schema import ArchConfig, TrainerConfig
from megatron_elo.models.hf_mapping import merge_stages, unshard_tp
from megatron_elo.models.tiny import make_tiny_hf_model
from megatron_elo.parallel.spawn import run_distributed
from megatron_elo.trainer.step import TrainBatch, lr_factor

pytest.importorskip("megatron.core")

ARCH = ArchConfig(family="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=2, num_kv_heads=2,
                  head_dim=32, vocab_size=90, max_position_embeddings=64, tie_word_embeddings=True)
TRAINER = TrainerConfig(lr=1e-3, warmup_steps=1, micro_batch_size=2, global_batch_size=8, kl_coef=0.1, entropy_coef=0.01,
                        grad_clip=1.0, clip_low=0.2, clip_high=0.28, precision="fp32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_hf_model(ARCH, tmp_path_factory.mktemp("policy") / "hf", seed=11))


def make_batch(model_dir: str, *, seed: int = 0, size: int = 8, seq: int = 12) -> TrainBatch:
    """A global batch with prompts of varying length, old log-probs near the model's own (some tokens clip)."""
    import transformers

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, ARCH.vocab_size, (size, seq), generator=gen)
    prompt_len = torch.randint(2, 6, (size,), generator=gen)
    end = torch.randint(8, seq + 1, (size,), generator=gen)
    positions = torch.arange(seq)[None]
    mask = (positions >= prompt_len[:, None]) & (positions < end[:, None])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    logp = torch.cat([torch.zeros(size, 1), logp], dim=1)
    old = (logp + 0.3 * torch.randn(size, seq, generator=gen)) * mask
    ref = (logp + 0.2 * torch.randn(size, seq, generator=gen)) * mask
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.randn(size, generator=gen),
                      old_logprobs=old, ref_logprobs=ref)


def _trainer(model_dir: str, tp: int, pp: int, total_steps: int = 10, kernels: str = "torch", device: str = "cpu",
             precision: str = "fp32", lr: float = TRAINER.lr):
    import dataclasses

    import torch.distributed as dist

    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.trainer.build import build_policy_trainer

    layout = ParallelLayout(tp=tp, pp=pp, dp=dist.get_world_size() // (tp * pp))
    config = dataclasses.replace(TRAINER, kernels=kernels, precision=precision, lr=lr)
    return build_policy_trainer(model_dir, layout, config, total_steps=total_steps, pad_vocab_to_multiple_of=16, device=device,
                                dtype=precision)


def _dp_slice(batch: TrainBatch, groups) -> TrainBatch:
    dp, d = groups.layout.dp, groups.coords.dp_rank
    per = len(batch) // dp
    return next(batch.micro_batches(per)) if dp == 1 else list(batch.micro_batches(per))[d]


def grads_then_steps(rank, world_size, model_dir, tp, pp, batches, kernels="torch", device="cpu"):
    """Gradients of the first batch, then the weights after one optimizer step per batch (returned on the CPU)."""
    trainer = _trainer(model_dir, tp, pp, kernels=kernels, device=device)
    stats = trainer.forward_backward(_dp_slice(batches[0], trainer.groups).to(trainer.device))
    norm = trainer.grad_norm()
    grads = {n: p.grad.cpu().clone() for n, p in trainer.model.named_parameters()}
    trainer.optimizer_step()
    for batch in batches[1:]:
        trainer.train_step(_dp_slice(batch, trainer.groups))  # on the CPU: train_step moves it
    weights = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    return trainer.groups.coords, stats, norm, grads, weights


def _merge(results, tp: int, pp: int):
    """Full (TP = PP = 1) grads and weights from every rank's shard (DP rank 0's)."""
    shards = {(c.tp_rank, c.pp_rank): (g, w) for c, _, _, g, w in results if c.dp_rank == 0}
    merged = []
    for which in (0, 1):
        stages = [{k: unshard_tp(k, [shards[(t, p)][which][k] for t in range(tp)]) for k in shards[(0, p)][which]}
                  for p in range(pp)]
        merged.append(merge_stages(stages, ARCH))
    return merged


@pytest.fixture(scope="module")
def reference(model_dir):
    batches = [make_batch(model_dir, seed=s) for s in range(2)]
    return batches, run_distributed(grads_then_steps, 1, model_dir, 1, 1, batches)[0]


@pytest.mark.parametrize("tp, pp, dp, kernels", [(2, 1, 1, "torch"), (1, 1, 2, "torch"), (1, 2, 1, "torch"),
                                                 (1, 1, 1, "triton"), (2, 1, 1, "triton"), (1, 2, 1, "triton")])
def test_loss_grads_and_updates_match_the_single_process_run(model_dir, reference, tp, pp, dp, kernels):
    """Every layout, with either loss-side implementation (fp32), against TP = PP = DP = 1 in torch."""
    if kernels == "triton":
        pytest.importorskip("triton")
        if torch.cuda.is_available():  # the interpreter is off there; test_train_step_on_cuda_equals_the_cpu_step runs it
            pytest.skip("CPU ranks run Triton through its interpreter, which is off where CUDA is present")
    batches, (_, ref_stats, ref_norm, ref_grads, ref_weights) = reference
    results = run_distributed(grads_then_steps, tp * pp * dp, model_dir, tp, pp, batches, kernels)
    grads, weights = _merge(results, tp, pp)
    for _, stats, norm, _, _ in results:  # every rank reports the same numbers
        for key in ("loss", "pg_loss", "kl", "entropy", "clip_fraction", "response_tokens"):
            assert stats[key] == pytest.approx(ref_stats[key], rel=1e-5, abs=1e-6), key
        assert norm == pytest.approx(ref_norm, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=2e-6, rtol=1e-4, msg=name)
        # Adam divides by sqrt(v): where the true gradient is 0 (e.g. the key bias, to which softmax
        # is invariant) rounding noise of ~1e-9 becomes a full +-lr step, differently per layout.
        conditioned = ref_grads[name].abs() > 1e-5
        torch.testing.assert_close(weights[name][conditioned], ref_weights[name][conditioned], atol=2e-6, rtol=1e-4,
                                   msg=name)
    assert 0 < ref_stats["clip_fraction"] < 1 and ref_stats["kl"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_train_step_on_cuda_equals_the_cpu_step(model_dir, reference, kernels):
    """The same two steps with the model on CUDA (fp32, inputs handed over on the CPU) as on the CPU:
    every tensor the trainer allocates or reduces follows the model's device."""
    batches, (_, ref_stats, ref_norm, ref_grads, ref_weights) = reference
    _, stats, norm, grads, weights = run_distributed(grads_then_steps, 1, model_dir, 1, 1, batches, kernels, "cuda",
                                                     backend="nccl")[0]
    for key in ("loss", "pg_loss", "kl", "entropy", "clip_fraction", "response_tokens"):
        assert stats[key] == pytest.approx(ref_stats[key], rel=1e-4, abs=1e-6), key
    assert norm == pytest.approx(ref_norm, rel=1e-4)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-3, msg=name)
        conditioned = ref_grads[name].abs() > 1e-4  # see the layout test: Adam turns noise on ~0 grads into +-lr
        torch.testing.assert_close(weights[name][conditioned], ref_weights[name][conditioned], atol=1e-5, rtol=1e-3,
                                   msg=name)


def test_gradient_equals_autograd_through_transformers(model_dir, reference):
    """The Megatron loss gradient w.r.t. the embedding equals one computed through the HF model."""
    import transformers

    from megatron_elo.loss.reference import (
        PolicyLossConfig,
        broadcast_to_tokens,
        policy_loss,
        token_logprobs_and_entropy,
    )

    batches, (_, ref_stats, _, ref_grads, _) = reference
    batch = batches[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    logits = model(batch.tokens).logits[:, :-1]
    logp, ent = token_logprobs_and_entropy(logits, batch.tokens[:, 1:])
    pad = torch.zeros(len(batch), 1)
    logp, ent = torch.cat([pad, logp], 1), torch.cat([pad, ent], 1)
    loss, _ = policy_loss(logp, batch.old_logprobs, broadcast_to_tokens(batch.advantages, batch.response_mask),
                          batch.response_mask, config=PolicyLossConfig.from_trainer(TRAINER),
                          ref_logprobs=batch.ref_logprobs, entropy=ent)
    loss.backward()
    assert loss.item() == pytest.approx(ref_stats["loss"], rel=1e-5)
    hf_grad = model.model.embed_tokens.weight.grad
    torch.testing.assert_close(ref_grads["embedding.word_embeddings.weight"][: ARCH.vocab_size], hf_grad, atol=1e-6, rtol=1e-4)


def test_lr_schedule_hand_values():
    kw = dict(warmup_steps=2, total_steps=12, min_ratio=0.1)
    assert [lr_factor(s, schedule="constant", **kw) for s in (0, 1, 2, 11)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(7, schedule="linear", **kw) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_factor(7, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(12, schedule="cosine", **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(5, schedule="step", **kw)


def straight_or_resumed(rank, world_size, model_dir, batches, ckpt_root, resume_after, precision="fp32"):
    """Train on every batch; if ``resume_after`` is set, save after that many steps, build a fresh
    trainer, load, and continue. Returns the step counter, the final weights (and fp32 main weights
    when mixed precision keeps them) and a draw from the RNG."""
    from megatron_elo.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    torch.manual_seed(123)
    trainer = _trainer(model_dir, 1, 1, precision=precision)
    for i, batch in enumerate(batches):
        if resume_after is not None and i == resume_after:
            save_checkpoint(trainer, ckpt_root, extra={"data_position": i}, keep_last=1)
            trainer = _trainer(model_dir, 1, 1, precision=precision)  # fresh weights: everything must come from disk
            assert load_checkpoint(trainer, latest_checkpoint(ckpt_root)) == {"data_position": i}
        trainer.train_step(_dp_slice(batch, trainer.groups))
    main = [m.detach().clone() for m in trainer.main_params] if trainer.main_params is not None else []
    return trainer.step, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, torch.rand(3), main


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_bit_exact(model_dir, tmp_path, precision):
    batches = [make_batch(model_dir, seed=s) for s in range(4)]
    straight = run_distributed(straight_or_resumed, 1, model_dir, batches, str(tmp_path / "a"), None, precision)[0]
    resumed = run_distributed(straight_or_resumed, 1, model_dir, batches, str(tmp_path / "b"), 2, precision)[0]
    assert straight[0] == resumed[0] == 4
    assert all(torch.equal(straight[1][k], resumed[1][k]) for k in straight[1])
    assert torch.equal(straight[2], resumed[2])  # RNG state restored too
    assert len(straight[3]) == (0 if precision == "fp32" else len(straight[1]))  # bf16: fp32 main weights, saved too
    assert all(torch.equal(a, b) for a, b in zip(straight[3], resumed[3], strict=True))


def one_bf16_step(rank, world_size, model_dir, batch, lr):
    trainer = _trainer(model_dir, 1, 1, precision="bf16", lr=lr)
    before = [p.detach().float().clone() for p in trainer.params]
    trainer.train_step(batch)
    return before, [p.detach().clone() for p in trainer.params], [m.detach().clone() for m in trainer.main_params]


def test_bf16_training_keeps_fp32_main_weights(model_dir):
    """A step smaller than bf16's spacing moves the fp32 main weights (AdamW: about lr per element)
    while most bf16 weights round back to where they were; the model holds the main weights rounded."""
    lr = 1e-5
    before, model_weights, main = run_distributed(one_bf16_step, 1, model_dir, make_batch(model_dir), lr)[0]
    # megatron-core's local-spec norms keep fp32 weights whatever params_dtype is; every linear is bf16
    assert sum(w.dtype == torch.bfloat16 for w in model_weights) > len(model_weights) / 2
    assert all(m.dtype == torch.float32 for m in main)
    assert all(torch.equal(w, m.to(w.dtype)) for w, m in zip(model_weights, main, strict=True))
    moved = torch.cat([(m - b).abs().flatten() for m, b in zip(main, before, strict=True)])
    assert moved.max() <= 1.01 * lr and (moved > 0.5 * lr).float().mean() > 0.8
    rounded_moved = torch.cat([(w.float() != b).flatten() for w, b in zip(model_weights, before, strict=True)])
    assert rounded_moved.float().mean() < 0.5  # what stepping the bf16 weights themselves would have kept, at most


def save_then_report(rank, world_size, model_dir, batch, ckpt_root):
    from megatron_elo.trainer.checkpoint import save_checkpoint

    trainer = _trainer(model_dir, 1, 1)
    trainer.train_step(_dp_slice(batch, trainer.groups))
    save_checkpoint(trainer, ckpt_root)
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer.optimizer.state_dict()


def load_then_report(rank, world_size, model_dir, ckpt_root):
    from megatron_elo.trainer.checkpoint import latest_checkpoint, load_checkpoint

    trainer = _trainer(model_dir, 1, 1)
    load_checkpoint(trainer, latest_checkpoint(ckpt_root))
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer.optimizer.state_dict(), trainer.step


def test_resume_with_a_different_dp_size(model_dir, tmp_path):
    saved_weights, saved_optimizer = run_distributed(save_then_report, 2, model_dir, make_batch(model_dir), str(tmp_path))[0]
    weights, optimizer, step = run_distributed(load_then_report, 1, model_dir, str(tmp_path))[0]
    assert step == 1 and all(torch.equal(weights[k], saved_weights[k]) for k in weights)
    for key, state in saved_optimizer["state"].items():
        assert torch.equal(optimizer["state"][key]["exp_avg"], state["exp_avg"])


def load_wrong_layout(rank, world_size, model_dir, ckpt_root, precision="fp32"):
    from megatron_elo.trainer.checkpoint import latest_checkpoint, load_checkpoint

    trainer = _trainer(model_dir, world_size, 1, precision=precision)
    try:
        load_checkpoint(trainer, latest_checkpoint(ckpt_root))
    except ValueError as err:
        return str(err)
    return "loaded"


def test_resume_refuses_another_tp_and_incomplete_dirs(model_dir, tmp_path):
    run_distributed(save_then_report, 1, model_dir, make_batch(model_dir), str(tmp_path))
    messages = run_distributed(load_wrong_layout, 2, model_dir, str(tmp_path))
    assert all("written with tp=1 pp=1, this run has tp=2 pp=1" in m for m in messages)
    message = run_distributed(load_wrong_layout, 1, model_dir, str(tmp_path), "bf16")[0]
    assert "has no fp32 main weights (written by an fp32 trainer); resume with trainer.precision=fp32" in message
    (tmp_path / "step_00000009").mkdir()
    from megatron_elo.trainer.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path).name == "step_00000001"  # the incomplete directory is skipped


def test_training_checkpoint_exports_to_hf(model_dir, tmp_path):
    import transformers

    from megatron_elo.models.convert import megatron_dir_to_hf

    weights, _ = run_distributed(save_then_report, 1, model_dir, make_batch(model_dir), str(tmp_path / "ckpt"))[0]
    out = megatron_dir_to_hf(tmp_path / "ckpt" / "step_00000001", tmp_path / "hf")
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    assert torch.equal(exported["model.embed_tokens.weight"], weights["embedding.word_embeddings.weight"][: ARCH.vocab_size])
    assert torch.equal(exported["model.norm.weight"], weights["decoder.final_layernorm.weight"])


# ---------------------------------------------------------------- bench trainer


def bench_trainer_session(rank, world_size, out):
    from megatron_elo.cli import main

    return main(["bench", "trainer", "--batch", "2", "--seq", "16", "--steps", "2", "--warmup", "1", "--peak-tflops", "0.5",
                 "--out", out])


def test_bench_trainer_reports_consistent_throughput_and_mfu(tmp_path):
    """One row per loss-side setting whose tokens/s, step time and MFU agree with each other and with
    the flop count; the flop count puts issue #5's H100 reference (32.8k tokens/s) at its ~32% MFU."""
    from megatron_elo.trainer.benchmark import SHAPES, train_flops_per_token

    out = tmp_path / "trainer.md"
    assert run_distributed(bench_trainer_session, 1, str(out), timeout=300)[0] == 0
    table = out.read_text()
    assert "shape small, batch 2 x 16" in table and "issue #5 reference" in table
    row = next(line for line in table.splitlines() if line.startswith("| torch"))
    step_ms, tokens_per_s, mfu = (cell.strip() for cell in row.split("|")[2:5])
    assert float(tokens_per_s.replace(",", "")) == pytest.approx(2 * 16 / (float(step_ms) / 1e3), rel=0.01)
    expected_mfu = float(tokens_per_s.replace(",", "")) * train_flops_per_token(SHAPES["small"], 16) / 0.5e12
    assert float(mfu.rstrip("%")) == pytest.approx(100 * expected_mfu, rel=0.02, abs=0.05)
    reference_mfu = 32.8e3 * train_flops_per_token(SHAPES["qwen2.5-1.5b"], 2048) / 989e12
    assert 0.30 < reference_mfu < 0.36
