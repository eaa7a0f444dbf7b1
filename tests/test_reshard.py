"""Colocated engines in a 2-process world (vLLM external_launcher over gloo) fed by the Megatron
trainer: engine log-probs equal the trainer's before and after a training step (fp32, 1e-4) for
trainer TP=2 / PP=2 into engines of TP=2 and TP=1 x DP=2; ranks whose engine shard matches their
trainer shard move no bytes, and the parts of the weights they do not send are never read (NaN-poisoned)."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.config.schema import ArchConfig, EngineConfig, TrainerConfig
from megatron_elo.models.tiny import make_tiny_hf_model
from megatron_elo.parallel.spawn import run_distributed
from megatron_elo.rollout.weight_sync import EngineShard, engine_reads_local_slice, vllm_vocab_rows

ARCH = ArchConfig(family="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2, num_kv_heads=2,
                  head_dim=64, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=True)
SEQUENCES = [[5, 17, 99, 3, 42, 8, 64, 1], [7, 7, 7, 120, 0, 33]]


# ---------------------------------------------------------------- the slice plan (pure)


def test_vllm_vocab_rows_pad_to_64_and_split_evenly():
    assert vllm_vocab_rows(128, EngineShard(tp=2, tp_rank=1)) == range(64, 128)
    assert vllm_vocab_rows(100, EngineShard(tp=2, tp_rank=1)) == range(64, 100)  # padded 128, rank 1 reads 64..99
    assert vllm_vocab_rows(152064, EngineShard(tp=4, tp_rank=3)) == range(114048, 152064)


@pytest.mark.parametrize("name, trainer_tp, engine, local_rows, expected", [
    ("decoder.layers.0.self_attention.linear_qkv.weight", 2, EngineShard(tp=2, tp_rank=1), 384, True),
    ("decoder.layers.0.mlp.linear_fc2.weight", 2, EngineShard(tp=2, tp_rank=1), 128, True),
    ("decoder.layers.0.mlp.linear_fc1.weight", 2, EngineShard(tp=1, tp_rank=0), 256, False),  # whole-model engine
    ("decoder.layers.0.mlp.linear_fc1.weight", 2, EngineShard(tp=2, tp_rank=0), 256, False),  # rank 1's trainer shard
    ("decoder.layers.0.input_layernorm.weight", 2, EngineShard(tp=1, tp_rank=0), 128, True),  # replicated
    ("embedding.word_embeddings.weight", 2, EngineShard(tp=2, tp_rank=1), 64, True),  # no padding: same split
    ("embedding.word_embeddings.weight", 2, EngineShard(tp=2, tp_rank=1), 128, False),  # Megatron padded to 256
    ("embedding.word_embeddings.weight", 2, EngineShard(tp=2, tp_rank=0), 128, True),  # rank 0 holds 0..127 anyway
    ("embedding.word_embeddings.weight", 1, EngineShard(tp=4, tp_rank=2), 128, True),  # trainer TP 1 holds all
])
def test_which_weights_need_no_communication(name, trainer_tp, engine, local_rows, expected):
    trainer_rank = engine.tp_rank if "fc1" not in name or engine.tp == 1 else 1
    assert engine_reads_local_slice(name, ARCH, trainer_tp=trainer_tp, trainer_tp_rank=trainer_rank % trainer_tp,
                                     local_rows=local_rows, engine=engine) is expected


def test_colocated_shard_is_tp_fastest():
    assert [EngineShard.colocated(engine_tp=2, rank=r).tp_rank for r in range(4)] == [0, 1, 0, 1]


# ---------------------------------------------------------------- engines in a 2-rank world

pytest.importorskip("vllm")
pytest.importorskip("megatron.core")


def colocated_session(rank, world_size, model_dir, trainer_layout, engine_layout, pad_multiple):
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.rollout.engine import RolloutEngine, SamplingSettings
    from megatron_elo.rollout.weight_sync import SyncStats, hf_weight_stream
    from megatron_elo.trainer.build import build_policy_trainer
    from megatron_elo.trainer.step import TrainBatch

    tp, pp, dp = trainer_layout
    config = TrainerConfig(lr=0.05, micro_batch_size=4, global_batch_size=4 * dp, precision="fp32", grad_clip=0.0)
    trainer = build_policy_trainer(model_dir, ParallelLayout(tp=tp, pp=pp, dp=dp), config, total_steps=5,
                                   pad_vocab_to_multiple_of=pad_multiple)
    engine_tp, engine_dp = engine_layout
    engine = RolloutEngine(model_dir, EngineConfig(tp=engine_tp, dp=engine_dp, gpu_memory_utilization=0.2, max_model_len=64),
                           seed=0, dtype="fp32", distributed=True)

    def both_logprobs():
        engine_lp = [engine.score([s])[0][1:] for s in SEQUENCES]
        trainer_lp = [trainer.compute_logprobs(torch.tensor([s])) for s in SEQUENCES]
        return [(e, None if t is None else t[0, 1:].tolist()) for e, t in zip(engine_lp, trainer_lp, strict=True)]

    report = {"before": both_logprobs()}
    tokens = torch.tensor([SEQUENCES[0]] * 4)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False
    trainer.train_step(TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.ones(4),
                                  old_logprobs=torch.zeros(tokens.shape)))
    stats = SyncStats()
    engine.load_weights(hf_weight_stream(trainer.model, trainer.groups, trainer.arch, engine=engine.shard(), stats=stats,
                                         poison=True))
    report["after"] = both_logprobs()
    report["stats"] = stats
    report["samples"] = [s.token_ids for s in engine.generate([[1, 2, 3]], SamplingSettings(n=2, max_tokens=4, seed=3))[0]]
    return report


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_hf_model(ARCH, tmp_path_factory.mktemp("reshard") / "hf", seed=2))


CASES = {  # name: (trainer tp, pp, dp), (engine tp, dp), Megatron vocab padding multiple
    "trainer_tp2_engine_tp2": ((2, 1, 1), (2, 1), 128),  # vocab padded to 256: embedding gathered, the rest local
    "trainer_tp2_engine_dp2": ((2, 1, 1), (1, 2), None),  # whole-model engine per rank: every shard gathered
    "trainer_pp2_engine_tp2": ((1, 2, 1), (2, 1), None),  # stages broadcast their weights, TP slices local
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, model_dir):
    trainer_layout, engine_layout, pad = CASES[request.param]
    return request.param, run_distributed(colocated_session, 2, model_dir, trainer_layout, engine_layout, pad, timeout=900)


def test_engine_logprobs_equal_the_trainers_before_and_after_a_step(case):
    name, reports = case
    last_stage = reports[-1]  # the trainer's log-probs live on the last pipeline stage
    for report in reports:  # every rank's engine shard took part; scores come back on every rank
        for key in ("before", "after"):
            for (engine_lp, _), (_, trainer_lp) in zip(report[key], last_stage[key], strict=True):
                torch.testing.assert_close(torch.tensor(engine_lp), torch.tensor(trainer_lp), atol=1e-4, rtol=1e-4)
    before, after = torch.tensor(last_stage["before"][0][0]), torch.tensor(last_stage["after"][0][0])
    assert (after - before).abs().max() > 1e-2, f"{name}: the engine did not follow the training step"


def test_bytes_moved_follow_the_layouts(case):
    name, reports = case
    weights = 2 * 7 + 2  # per layer: 2 norms, qkv w+b, proj, fc1, fc2; embedding, final norm (tied head)
    for report in reports:
        stats = report["stats"]
        assert stats.weights == weights
        if name == "trainer_tp2_engine_tp2":
            assert stats.local_weights == weights - 1  # only the embedding, padded differently, is gathered
            assert stats.received_bytes == 128 * 128 * 4  # the other rank's [128, 128] fp32 embedding shard
        elif name == "trainer_tp2_engine_dp2":
            assert stats.weights - stats.local_weights == 2 * 5 + 1  # qkv w+b, proj, fc1, fc2 per layer; embedding
        else:  # PP=2: each rank receives the other stage's weights, TP 1 needs no gather
            assert stats.local_weights == weights
            assert stats.received_bytes > 0


def test_ranks_generate_the_same_samples_in_an_engine_tp_group(case):
    name, reports = case
    if name != "trainer_tp2_engine_dp2":  # DP replicas sample their own prompts independently
        assert reports[0]["samples"] == reports[1]["samples"]


def test_bench_reshard_prints_both_methods_and_the_bytes_they_move(capsys):
    """``bench reshard --engine none`` (the Megatron side, as on the GPU machine): ours moves no
    bytes where engine TP = trainer TP, the gather-everything peer moves the other rank's shards."""
    from megatron_elo.cli import main

    assert main(["bench", "reshard", "--engine", "none", "--layouts", "tp2->tp2", "--hidden", "128", "--ffn", "256",
                 "--layers", "2", "--heads", "2", "--kv-heads", "2", "--vocab", "256", "--repeats", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| tp2->tp2")]
    received = {row[2].strip(): float(row[6]) for row in rows}
    assert received["ours: local slices"] == 0.0 and received["peers: gather all"] > 0.0
