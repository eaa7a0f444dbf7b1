"""The stages behind the recipes, each alone: the answer store keys on what an opponent saw, served
opponents are asked concurrently, the state registry restores every stateful stage (and names the
ones a checkpoint lacks), the loss registry, and a rank waiting on a slow driver fails naming
cluster.timeout_minutes instead of hanging."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from megatron_elo.config.loader import load_config
from megatron_elo.flow import Prompt
from megatron_elo.parallel.spawn import run_distributed
from megatron_elo.rollout.engine import Sample

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


class FakeEngine:
    """Answers every prompt with its own length (as digits), counting the prompts it generated."""

    def __init__(self, *, served: bool = False, barrier: threading.Barrier | None = None, tp: int = 1, dp: int = 1):
        from megatron_elo.config.schema import EngineConfig

        self.served, self.barrier, self.generated = served, barrier, 0
        self.config = EngineConfig(tp=tp, dp=dp)

    def generate(self, prompts, settings, seeds=None):
        from megatron_elo.tasks.arithmetic import CharTokenizer

        if self.barrier is not None:
            self.barrier.wait(timeout=20)  # every served opponent must be asked before any returns
        self.generated += len(prompts)
        digits = CharTokenizer()
        return [[Sample(token_ids=tuple(digits.encode(str(len(p)))), logprobs=(0.0,), finish_reason="stop")] * settings.n
                for p in prompts]

    def close(self):
        pass


def _player(tmp_path: Path, tokenizer, engine: FakeEngine, *, temperature: float = 1.0):
    from megatron_elo.config.schema import OpponentConfig
    from megatron_elo.players.answer_store import AnswerStore
    from megatron_elo.players.frozen import FrozenPlayer

    config = OpponentConfig(name="rival", temperature=temperature, max_new_tokens=4)
    return FrozenPlayer(config, tokenizer=tokenizer, store=AnswerStore(tmp_path / "answers.sqlite"), run_seed=0,
                        open_engine=lambda: engine, served=engine.served)


def test_the_answer_store_keys_on_what_the_opponent_saw(tmp_path):
    """The same prompt, template, settings and seed reuse the stored answer (a new process included: a
    fresh player on the same file); another system prompt, temperature or seed is a new answer."""
    from megatron_elo.data.tokenizer import ChatTokenizer
    from megatron_elo.models.tiny import make_tiny_tokenizer

    make_tiny_tokenizer(tmp_path / "tok")
    prompts = [Prompt(prompt_id=f"p{i}", text=f"question {i}") for i in range(3)]
    engine = FakeEngine()
    first = _player(tmp_path, ChatTokenizer(str(tmp_path / "tok"), system_prompt="Be brief."), engine)
    answers = first.answers(prompts)
    assert engine.generated == 3 and (tmp_path / "answers.sqlite").is_file()
    again = _player(tmp_path, ChatTokenizer(str(tmp_path / "tok"), system_prompt="Be brief."), engine)
    assert again.answers(prompts) == answers and engine.generated == 3  # all three from the store
    other_system = _player(tmp_path, ChatTokenizer(str(tmp_path / "tok"), system_prompt="Be thorough."), engine)
    changed = other_system.answers(prompts)
    assert engine.generated == 6 and changed != answers  # the longer system prompt: other ids, other answers
    _player(tmp_path, ChatTokenizer(str(tmp_path / "tok"), system_prompt="Be brief."), engine, temperature=0.5).answers(prompts)
    assert engine.generated == 9
    first.answers(prompts, seed=7)
    assert engine.generated == 12
    first.answers(prompts, greedy=True) and first.answers(prompts, greedy=True)
    assert engine.generated == 15  # greedy answers are stored apart from sampled ones, once


def test_served_opponents_are_asked_concurrently_in_process_ones_in_turn(tmp_path):
    """answers_as_completed: two served opponents must both be in flight (each waits at a barrier
    for the other); the in-process one answers in this thread meanwhile."""
    from megatron_elo.players.frozen import FrozenPlayers
    from megatron_elo.tasks.arithmetic import CharTokenizer

    barrier = threading.Barrier(2)
    engines = {"a": FakeEngine(served=True, barrier=barrier), "b": FakeEngine(served=True, barrier=barrier),
               "local": FakeEngine()}
    players = {}
    for name, engine in engines.items():
        player = _player(tmp_path / name, CharTokenizer(), engine)
        player.name = name
        players[name] = player
    prompts = [Prompt(prompt_id=f"p{i}", text=f"{i}+1=") for i in range(4)]
    got = dict(FrozenPlayers(players).answers_as_completed({"a": prompts, "b": prompts[:2], "local": prompts[1:]}))
    assert set(got) == {"a", "b", "local"} and [len(got[n]) for n in ("a", "b", "local")] == [4, 2, 3]
    assert got["b"]["p1"].player == "b" and got["b"]["p1"].text == str(len(CharTokenizer().encode_prompt(prompts[1])))


class Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class PerRank:
    def __init__(self):
        self.tensor = torch.zeros(2)

    def rank_state_dict(self):
        return {"tensor": self.tensor}

    def load_rank_state_dict(self, state):
        self.tensor = state["tensor"]


def test_the_state_registry_keeps_the_stateful_stages_and_names_missing_ones(tmp_path):
    from megatron_elo.runner.state import RunState, StateRegistry

    run_state, counter, per_rank = RunState(step=3, evals=[{"step": 0}]), Counter(), PerRank()
    registry = StateRegistry(run_state)
    registry.register_stages({"counter": counter, "pending": per_rank, "stateless": object(), "absent": None})
    assert set(registry.json_stages) == {"run", "counter"} and set(registry.rank_stages) == {"pending"}
    counter.value, per_rank.tensor = 5, torch.ones(2)
    saved, saved_rank = registry.state_dict(), registry.rank_state_dict()
    fresh_state, fresh_counter, fresh_rank = RunState(), Counter(), PerRank()
    again = StateRegistry(fresh_state)
    again.register_stages({"counter": fresh_counter, "pending": fresh_rank})
    again.load(saved, saved_rank, source=tmp_path)
    assert fresh_state == run_state and fresh_counter.value == 5 and torch.equal(fresh_rank.tensor, torch.ones(2))
    with pytest.raises(ValueError, match=r"has no saved state for stage\(s\) \['counter'\]"):
        again.load({"run": saved["run"]}, saved_rank, source=tmp_path)
    with pytest.raises(ValueError, match="registered already"):
        again.register("counter", Counter())


def test_a_stateful_stage_a_recipe_does_not_list_is_found():
    from megatron_elo.runner.state import unlisted_stages

    class Recipe:
        def __init__(self):
            self.counter, self.pending, self.forgotten, self.plain = Counter(), PerRank(), Counter(), object()

        def stages(self):
            return {"counter": self.counter, "pending": self.pending}

    recipe = Recipe()
    assert unlisted_stages(recipe, recipe.stages()) == ["forgotten"]
    assert unlisted_stages(recipe, {**recipe.stages(), "forgotten": recipe.forgotten}) == []


def test_the_loss_registry():
    from megatron_elo.loss.reference import PolicyLossConfig, policy_loss
    from megatron_elo.loss.registry import LossSpec, get_loss, register_loss
    from megatron_elo.trainer.step import TrainBatch

    torch.manual_seed(0)
    logprobs, old = -torch.rand(2, 5), -torch.rand(2, 5)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    micro = TrainBatch(tokens=torch.zeros(2, 5, dtype=torch.long), response_mask=mask, advantages=torch.tensor([1.0, -0.5]),
                       old_logprobs=old)
    config = PolicyLossConfig()
    loss, _ = get_loss("grpo", fused=False)(logprobs, micro, entropy=None, config=config, normalizer=6.0)
    expected, _ = policy_loss(logprobs, old, torch.tensor([[1.0] * 5, [-0.5] * 5]) * mask, mask, config=config, normalizer=6.0)
    assert loss.item() == expected.item()
    with pytest.raises(ValueError, match=r"unknown loss 'kto'; registered: \['dpo', 'grpo', 'inpo', 'ipo', 'orpo', 'simpo', 'sppo'\]"):
        get_loss("kto", fused=False)
    with pytest.raises(ValueError, match="registered already"):
        register_loss(LossSpec(name="grpo", torch=policy_loss))


class SlowJudge:
    """The exact checker after a pause longer than the configured timeout."""

    def __init__(self, seconds: float):
        from megatron_elo.judges.programmatic import ArithmeticJudge

        self.seconds, self.inner = seconds, ArithmeticJudge(noise=0.0, swap_positions=False)

    def judge(self, games, rng):
        time.sleep(self.seconds)
        return self.inner.judge(games, rng)


def evaluate_with_a_slow_driver(rank, world_size, timeout_minutes, judge_seconds):
    """The evaluation stage on 2 ranks (fake engines), its driver judging for ``judge_seconds``."""
    from megatron_elo.config.schema import OpponentConfig
    from megatron_elo.evaluation.evaluator import Evaluator
    from megatron_elo.parallel.world import DriverTimeout, World
    from megatron_elo.players.answer_store import AnswerStore
    from megatron_elo.players.frozen import FrozenPlayer, FrozenPlayers
    from megatron_elo.players.sampler import PolicySampler
    from megatron_elo.tasks.arithmetic import CharTokenizer, make_prompts

    world = World.join(device="cpu", timeout_minutes=timeout_minutes)
    cfg = load_config(TINY)
    opponents = None
    if world.is_driver:
        import tempfile

        store = AnswerStore(Path(tempfile.mkdtemp()) / "answers.sqlite")
        opponents = FrozenPlayers({"rival": FrozenPlayer(OpponentConfig(name="rival"), tokenizer=CharTokenizer(), store=store,
                                                         run_seed=0, open_engine=FakeEngine, served=False)})
    evaluator = Evaluator(config=cfg.eval, prompts=make_prompts(4, seed=0, max_operand=9), world=world,
                          sampler=PolicySampler(FakeEngine(dp=2), world=world, tokenizer=CharTokenizer()),
                          opponents=opponents, judge=SlowJudge(judge_seconds) if world.is_driver else None,
                          opponent_names=["rival"], max_new_tokens=4)
    try:
        return evaluator.evaluate(step=7)
    except DriverTimeout as err:
        return f"DriverTimeout: {err}"
    except RuntimeError as err:  # the driver, after its peer gave up: gloo's "connection closed by peer"
        return f"{type(err).__name__}: {str(err)[:80]}"


def test_a_rank_waiting_longer_than_the_timeout_for_the_drivers_evaluation_fails_naming_the_setting():
    """cluster.timeout_minutes = 0.05 (3 s), the driver judges for 8 s: rank 1 stops with a message naming
    the setting and the phase (the driver then finds its peer gone); a timeout above the judging time
    gives both ranks the same result."""
    driver, other = run_distributed(evaluate_with_a_slow_driver, 2, 0.05, 8.0, timeout=120)
    assert other.startswith("DriverTimeout: rank 1 waited more than cluster.timeout_minutes=0.05 for the driver's "
                            "evaluation games at step 7; raise cluster.timeout_minutes")
    assert driver.startswith("RuntimeError")  # it did not hang either
    driver, other = run_distributed(evaluate_with_a_slow_driver, 2, 1.0, 0.5, timeout=120)
    assert driver == other and driver.step == 7 and driver.per_opponent.keys() == {"rival"}


def test_checkpoint_checksums_find_a_damaged_file_and_the_newest_sound_checkpoint(tmp_path):
    """meta.json records every file's SHA-256; a truncated shard, a missing file or an unreadable
    meta.json makes a checkpoint corrupt, and the newest sound one is chosen, with a line per skip."""
    import json

    from megatron_elo.trainer.checkpoint import checkpoint_problems, file_sha256, latest_valid_checkpoint

    for step in (2, 4):
        folder = tmp_path / f"step_{step:08d}"
        folder.mkdir()
        (folder / "shard_tp0_pp0.pt").write_bytes(bytes(range(256)) * 64)
        (folder / "rng_rank0.pt").write_bytes(b"rng")
        files = {name: file_sha256(folder / name) for name in ("shard_tp0_pp0.pt", "rng_rank0.pt")}
        (folder / "meta.json").write_text(json.dumps({"step": step, "files": files}))
    newest = tmp_path / "step_00000004"
    assert checkpoint_problems(newest) == [] and latest_valid_checkpoint(tmp_path) == (newest, [])
    shard = newest / "shard_tp0_pp0.pt"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated, as a full disk or a killed copy leaves it
    chosen, skipped = latest_valid_checkpoint(tmp_path)
    assert chosen == tmp_path / "step_00000002"
    assert len(skipped) == 1 and "shard_tp0_pp0.pt: its SHA-256 is not the one recorded" in skipped[0]
    (tmp_path / "step_00000002" / "rng_rank0.pt").unlink()
    assert latest_valid_checkpoint(tmp_path)[0] is None
    assert checkpoint_problems(tmp_path / "step_00000002") == [f"{tmp_path / 'step_00000002' / 'rng_rank0.pt'}: missing"]
    (newest / "meta.json").write_text("{not json")
    assert "meta.json: unreadable" in checkpoint_problems(newest)[0]


def _long_and_short_prompts():
    from megatron_elo.tasks.arithmetic import make_prompts

    prompts = make_prompts(12, seed=0, max_operand=9)  # "a+b=": 5 tokens with BOS
    long = Prompt(prompt_id="long", text="1" * 30 + "+1=", reference="x")  # 34 tokens
    return prompts[:5] + [long] + prompts[5:]


def test_overlong_prompts_are_dropped_and_replaced_cut_or_refused():
    """rollout.overlong_prompt in the prompt source: drop keeps the batch's size with the next prompts
    (order otherwise the loader's) and counts; truncate keeps the last max tokens; error names the prompt;
    the position and counts resume exactly."""
    from megatron_elo.data.loader import PromptLoader
    from megatron_elo.data.source import OverlongPrompt, PromptSource
    from megatron_elo.tasks.arithmetic import CharTokenizer

    prompts = _long_and_short_prompts()
    tokenizer = CharTokenizer()

    def source(overlong):
        return PromptSource(PromptLoader(prompts, seed=0, shuffle=False), tokenizer, max_tokens=8, overlong=overlong)

    dropping = source("drop")
    first = dropping.next_batch(8)
    assert [p.prompt_id for p in first.prompts] == [p.prompt_id for p in prompts[:5] + prompts[6:9]]
    assert dropping.metrics() == {"prompts/overlong_dropped": 1.0, "prompts/overlong_truncated": 0.0}
    resumed = source("drop")
    resumed.load_state_dict(dropping.state_dict())
    assert resumed.next_batch(10) == dropping.next_batch(10) and resumed.dropped == dropping.dropped == 2  # next epoch: again
    cutting = source("truncate").next_batch(8)
    assert len(cutting.token_ids[5]) == 8 and cutting.token_ids[5] == tuple(tokenizer.encode_prompt(prompts[5]))[-8:]
    with pytest.raises(OverlongPrompt, match=r"prompt 'long' has 34 tokens, over rollout.max_prompt_tokens=8; raise it"):
        source("error").next_batch(8)
    with pytest.raises(OverlongPrompt, match="every training prompt is over"):
        PromptSource(PromptLoader(prompts, seed=0, shuffle=False), tokenizer, max_tokens=2).next_batch(4)


def draw_on_two_ranks(rank, world_size, overlong):
    from megatron_elo.data.loader import PromptLoader
    from megatron_elo.data.source import PromptSource
    from megatron_elo.parallel.world import World
    from megatron_elo.tasks.arithmetic import CharTokenizer

    world = World.join(device="cpu", timeout_minutes=1.0)
    source = PromptSource(PromptLoader(_long_and_short_prompts(), seed=0, shuffle=False), CharTokenizer(), max_tokens=8,
                          overlong=overlong) if world.is_driver else None
    try:
        return [p.prompt_id for p in world.on_driver(lambda: source.next_batch(8), waiting_for="the prompts").prompts]
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def test_an_overlong_prompt_neither_crashes_one_rank_nor_hangs_the_others():
    """On 2 ranks the driver draws: with drop both ranks get the same full batch; with error both stop
    at once (the driver with the prompt's error, the other rank naming it) instead of one waiting."""
    dropped = run_distributed(draw_on_two_ranks, 2, "drop", timeout=120)
    assert dropped[0] == dropped[1] and len(dropped[0]) == 8 and "long" not in dropped[0]
    driver, other = run_distributed(draw_on_two_ranks, 2, "error", timeout=120)
    assert driver.startswith("OverlongPrompt: prompt 'long' has 34 tokens")
    assert other.startswith("DriverFailed: rank 1: the driver failed during the prompts: OverlongPrompt: prompt 'long'")


def test_request_seeds_give_every_sample_of_a_call_its_own_stream():
    from megatron_elo.utils.seeds import request_seeds

    keys = [f"p{i}" for i in range(500)] + ["p3", "p3"]  # a prompt drawn three times in one batch
    seeds = request_seeds(1234, keys, n=8)
    streams = [s + j for s in seeds for j in range(8)]  # vLLM seeds sample j of a request with seed + j
    assert len(set(streams)) == len(streams) == 8 * len(keys)
    assert seeds == request_seeds(1234, keys, n=8) and seeds != request_seeds(1235, keys, n=8)
    assert request_seeds(1234, keys[:10], n=8) == seeds[:10]  # a request's seed does not depend on later ones
    with pytest.raises(ValueError, match="n must be at least 1"):
        request_seeds(0, keys, n=0)


class SeedRecordingEngine(FakeEngine):
    def generate(self, prompts, settings, seeds=None):
        self.seeds = list(seeds)
        return super().generate(prompts, settings, seeds)


def test_the_samplers_seeds_follow_prompt_ids_not_positions_in_the_batch():
    """Before: prompt i got seed + i, so with n samples prompt i's sample j shared its stream with
    prompt i + 1's sample j - 1, and a prompt's answers changed with its position in the batch."""
    from megatron_elo.parallel.world import World
    from megatron_elo.players.sampler import PolicySampler
    from megatron_elo.rollout.engine import SamplingSettings
    from megatron_elo.tasks.arithmetic import CharTokenizer

    engine = SeedRecordingEngine()
    sampler = PolicySampler(engine, world=World(rank=0, size=1, driver_group=None, timeout_minutes=1), tokenizer=CharTokenizer())
    a, b = Prompt(prompt_id="a", text="1+1="), Prompt(prompt_id="b", text="1+1=")
    settings = SamplingSettings(n=4, seed=99)
    sampler.respond([a, b], [[1], [1]], settings, player="policy")
    forward = engine.seeds
    sampler.respond([b, a], [[1], [1]], settings, player="policy")
    assert engine.seeds == forward[::-1]
    assert abs(forward[0] - forward[1]) >= 4  # disjoint [seed, seed + n) blocks


def test_prepared_players_made_with_another_split_are_made_again(tmp_path):
    """A player SFT-trained before the held-out split existed (no sft.json) or under another split
    must not be reused: it may have trained on the held-out problems."""
    import json

    from megatron_elo.players.prepare import STAMP, sft_settings, stale_snapshots

    cfg = load_config(TINY)
    for i, snapshot in enumerate(cfg.prepare.snapshots):
        snapshot.path = str(tmp_path / f"p{i}")
        Path(snapshot.path).mkdir()
        (Path(snapshot.path) / "config.json").write_text("{}")
        (Path(snapshot.path) / STAMP).write_text(json.dumps(sft_settings(cfg, snapshot.sft_steps)))
    assert stale_snapshots(cfg) == []
    (tmp_path / "p0" / STAMP).unlink()
    cfg.data.synthetic.num_validation = 50
    assert stale_snapshots(cfg) == [s.path for s in cfg.prepare.snapshots]


def test_a_checkpoint_rewritten_in_place_is_a_new_model_to_the_answer_store(tmp_path):
    """The demo's players are made again at the same paths when their split changes: their old answers
    must not be served for the new models (the key used to hold the path alone)."""
    import os

    from megatron_elo.players.answer_store import answer_key, checkpoint_fingerprint
    from megatron_elo.rollout.engine import SamplingSettings

    model = tmp_path / "weak"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"old weights")
    settings = SamplingSettings(temperature=1.0)
    before = answer_key(str(model), [1, 2, 3], settings, 7)
    assert answer_key(str(model), [1, 2, 3], settings, 7) == before
    (model / "model.safetensors").write_bytes(b"new weights, same path")
    os.utime(model / "model.safetensors", ns=(1, 1))
    checkpoint_fingerprint.cache_clear()  # a new process reads the files afresh
    assert answer_key(str(model), [1, 2, 3], settings, 7) != before
