"""eva, Temporal Self-Rewarding and EVOLVE: their selection rules on hand-built scores (which answer is chosen,
which rejected, which prompts get evolved and with what probability), the creator, the evolving prompt source
and its resume, the refinement prompts, the anchor's samples, the look-ahead copy put back bitwise, config
checks; and (slow) each recipe on tiny real engines: a resumed run equals an uninterrupted one bitwise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_elo.config.loader import ConfigError, config_from_dict, load_config, read_yaml
from megatron_elo.config.self_improve_schema import EvaConfig
from megatron_elo.config.validate import validate
from megatron_elo.data.evolving import (
    ArithmeticCreator,
    EvolvingPrompts,
    evolution_weights,
    informativeness,
    pick_for_evolution,
)
from megatron_elo.data.loader import PromptLoader
from megatron_elo.data.refine import Refiner, refine_chain, regroup
from megatron_elo.data.source import PromptSource
from megatron_elo.flow import Prompt, Response
from megatron_elo.signals.scored import (
    best_vs_worst,
    mix_pairs,
    refinement_choices,
    score_answers,
    tsr_choices,
)
from megatron_elo.tasks.arithmetic import CharTokenizer
from tests.test_loop import players  # noqa: F401  (the tiny players, made once per module)
from tests.two_ranks import tensor_parallel_twin

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {name: ROOT / "configs" / f"tiny_cpu_{name}.yaml" for name in ("eva", "tsr", "evolve")}
nan = math.nan


def picked(choices):
    return [(c.prompt_index, c.chosen, c.rejected) for c in choices]


# ---------------------------------------------------------------- Temporal Self-Rewarding


def test_anchored_rejection_takes_the_initial_models_worst_only_when_it_is_lower():
    current = np.array([[3, 5, 7], [4, 4, 4], [nan, 2, 6]], dtype=float)
    anchor = np.array([[1, 9, 9], [6, 6, 6], [2, 2, 2]], dtype=float)
    choices = tsr_choices(current, anchor)
    # p0: M_0's worst (1) is below M_i's worst (3); p1: all equal, no pair; p2: M_0's 2 is not below 2, NaN ignored
    assert picked(choices) == [(0, ("current", 2), ("anchor", 0)), (2, ("current", 2), ("current", 1))]
    assert [(c.chosen_score, c.rejected_score) for c in choices] == [(7.0, 1.0), (6.0, 2.0)]


def test_future_guided_chosen_replaces_only_a_lower_best_and_keeps_the_rejected():
    current = np.array([[3, 5, 7], [4, 4, 4], [nan, 2, 6]], dtype=float)
    anchor = np.array([[1, 9, 9], [6, 6, 6], [2, 2, 2]], dtype=float)
    future = np.array([[8, 1, 1], [0, 5, 0], [6, 6, 6]], dtype=float)
    # p0: 8 > 7 -> M_f's; p1: 5 > 4 beats the rejected 4 now (a pair phase 1 had not); p2: 6 is not above 6
    assert picked(tsr_choices(current, anchor, future)) == [
        (0, ("future", 0), ("anchor", 0)), (1, ("future", 1), ("current", 0)), (2, ("current", 2), ("current", 1))]
    assert tsr_choices(np.full((1, 2), nan), anchor[:1, :2], future[:1, :2]) == []  # nothing of M_i scored: no pair


# ---------------------------------------------------------------- EVOLVE


def test_refinement_pairs_choose_the_better_of_draft_and_refinement():
    drafts, refined = np.array([3, 5, nan, 4]), np.array([4, 2, 5, 4])
    assert picked(refinement_choices(drafts, refined)) == [(0, ("refined", 0), ("draft", 0)), (1, ("draft", 1), ("refined", 1))]
    scores = np.array([[1, 3, 3, 0], [2, 2, 2, 2]], dtype=float)
    assert picked(best_vs_worst(scores, source="chain")) == [(0, ("chain", 1), ("chain", 3))]


def test_pair_mix_subsamples_the_larger_kind_to_the_share():
    rng = np.random.default_rng(0)
    direct, refine = list(range(4)), list(range(100, 112))
    kept_direct, kept_refine = mix_pairs(direct, refine, share=0.5, rng=rng)
    assert kept_direct == direct and len(kept_refine) == 4 and kept_refine == sorted(kept_refine)
    assert [len(x) for x in mix_pairs(direct, refine, share=0.25, rng=rng)] == [4, 1]  # 1 / (4 + 1) ~ 0.25
    assert [len(x) for x in mix_pairs(list(range(10)), [1, 2], share=0.5, rng=rng)] == [2, 2]
    assert mix_pairs(direct, [], share=0.5, rng=rng) == (direct, [])  # nothing to balance against: kept whole
    assert mix_pairs(direct, refine, share=1.0, rng=rng) == ([], refine)
    assert mix_pairs(direct, refine, share=0.0, rng=rng) == (direct, [])


def test_refine_prompts_fill_the_template_keep_the_reference_and_regroup():
    tokenizer = CharTokenizer()
    prompts = [Prompt(prompt_id="a", text="1+2=", reference="3"), Prompt(prompt_id="b", text="10+20=", reference="30")]
    drafts = [[Response(player="policy", prompt_id=p.prompt_id, sample_index=j, text=t) for j, t in enumerate(texts)]
              for p, texts in zip(prompts, (["4", "3"], ["31", "3"]), strict=True)]
    refiner = Refiner("{prompt}{draft}?", tokenizer, max_tokens=9)
    batch = refiner.batch(prompts, drafts, link=1)
    # "10+20=31?" is 10 tokens with BOS: its draft is shortened to "3", the request kept whole
    assert [p.text for p in batch.prompts] == ["1+2=4?", "1+2=3?", "10+20=3?", "10+20=3?"]
    assert [p.prompt_id for p in batch.prompts] == ["a#r1.0", "a#r1.1", "b#r1.0", "b#r1.1"]
    assert {p.reference for p in batch.prompts[2:]} == {"30"}
    assert batch.token_ids[0] == tuple(tokenizer.encode_prompt("1+2=4?"))
    assert len(batch.token_ids[2]) == 9 and refiner.truncated == 1
    tight = Refiner("{prompt}{draft}?", tokenizer, max_tokens=5).batch(prompts[1:], [drafts[1][:1]], link=1)
    assert tight.token_ids[0] == tuple(tokenizer.encode_prompt("10+20=31?"))[-5:]  # not even the request fits: its end
    flat = [[Response(player="policy", prompt_id=p.prompt_id, sample_index=0, text=str(i))] for i, p in enumerate(batch.prompts)]
    grouped = regroup(flat, prompts, n=2)
    assert [[(r.prompt_id, r.sample_index, r.text) for r in g] for g in grouped] == [
        [("a", 0, "0"), ("a", 1, "1")], [("b", 0, "2"), ("b", 1, "3")]]
    with pytest.raises(ValueError, match=r"\{draft\}"):
        Refiner("{prompt}", tokenizer, max_tokens=None)


def test_a_refinement_chain_refines_each_links_answers():
    prompts = [Prompt(prompt_id="a", text="1+2=", reference="3")]
    drafts = [[Response(player="policy", prompt_id="a", sample_index=j, text=t) for j, t in enumerate(["4", "5"])]]
    asked = []

    def respond(batch, link):  # each refinement: the draft's number minus one
        asked.append([p.text for p in batch.prompts])
        return [[Response(player="policy", prompt_id=p.prompt_id, sample_index=0, text=str(int(p.text[4:-1]) - 1))]
                for p in batch.prompts]

    links, batches = refine_chain(Refiner("{prompt}{draft}?", CharTokenizer(), max_tokens=None), respond, prompts, drafts, 2)
    assert [[r.text for r in link[0]] for link in links] == [["4", "5"], ["3", "4"], ["2", "3"]]
    assert asked == [["1+2=4?", "1+2=5?"], ["1+2=3?", "1+2=4?"]] and len(batches) == 2


def test_answers_are_scored_alone_and_an_invalid_grade_is_nan():
    from megatron_elo.judges.programmatic import ArithmeticJudge

    prompts = [Prompt(prompt_id="a", text="1+2=", reference="3"), Prompt(prompt_id="b", text="5+5=")]  # b: no reference
    groups = [[Response(player="policy", prompt_id="a", sample_index=j, text=t) for j, t in enumerate(["3", "5"])],
              [Response(player="policy", prompt_id="b", sample_index=j, text="10") for j in range(2)]]
    scores, games, verdicts = score_answers(ArithmeticJudge(noise=0.0), prompts, groups, np.random.default_rng(0))
    assert scores[0].tolist() == [10.0, 8.0] and np.isnan(scores[1]).all()  # nothing to check b against: invalid
    assert len(games) == len(verdicts) == 4 and not verdicts[2].valid
    assert [g.game_id for g in games] == [0, 1, 2, 3]


# ---------------------------------------------------------------- eva


def test_informativeness_kinds_on_hand_values():
    rewards = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0.5, 0, 1, 1]], dtype=float)
    valid = np.ones_like(rewards, dtype=bool)
    valid[2, 1] = False  # left out: 0.5, 1, 1
    assert informativeness(rewards, valid, kind="max_min").tolist() == [1.0, 0.0, 0.5]
    assert informativeness(rewards, valid, kind="max_mean").tolist() == pytest.approx([0.5, 0.0, 1 - 2.5 / 3])
    assert informativeness(rewards, valid, kind="variance").tolist() == pytest.approx([0.25, 0.0, np.var([0.5, 1, 1])])
    one_valid = np.zeros_like(valid)
    one_valid[0, 0] = True
    assert informativeness(rewards, one_valid, kind="max_min").tolist() == [0.0, 0.0, 0.0]


def test_prompts_are_drawn_for_evolution_in_proportion_to_normalised_informativeness():
    assert evolution_weights(np.array([0.0, 2.0, 4.0])).tolist() == pytest.approx([0, 1 / 3, 2 / 3])
    assert evolution_weights(np.array([3.0, 3.0])).tolist() == [0.5, 0.5]
    info = np.array([5.0, 6.0, 7.0, 8.0])  # min-max: weights 0, 1/6, 2/6, 3/6
    rng = np.random.default_rng(1)
    counts = np.zeros(4)
    for _ in range(6000):
        (index,) = pick_for_evolution(info, fraction=0.25, rng=rng)  # a quarter of 4 prompts: one
        counts[index] += 1
    assert counts[0] == 0 and counts[1:] / 6000 == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=0.02)
    two = pick_for_evolution(info, fraction=0.5, rng=rng)
    assert len(two) == 2 and two == sorted(set(two)) and 0 not in two  # without replacement
    assert pick_for_evolution(np.array([0.0, 1.0, 1.0, 1.0]), fraction=1.0, rng=rng) == [1, 2, 3]  # weight 0: never


def test_arithmetic_creator_makes_harder_checkable_variants():
    creator = ArithmeticCreator(max_terms=3, max_operand=1000)
    parent = Prompt(prompt_id="p", text="12+7=", reference="19")
    (variants,) = creator.rewrite([parent], rewrites=4, step=3, seed=1)
    assert [v.template for v in variants] == ["add_term", "widen", "add_term", "widen"]
    for v in variants:
        terms = [int(t) for t in v.prompt.text.rstrip("=").split("+")]
        assert v.prompt.reference == str(sum(terms)) and v.parent_id == "p" and v.step == 3
    assert [len(v.prompt.text.rstrip("=").split("+")) for v in variants] == [3, 2, 3, 2]
    assert [v.prompt.prompt_id for v in variants] == ["p>3.0", "p>3.1", "p>3.2", "p>3.3"]
    assert variants == creator.rewrite([parent], rewrites=4, step=3, seed=1)[0]  # seeded
    full_creator = ArithmeticCreator(max_terms=3, max_operand=100)
    (full,) = full_creator.rewrite([Prompt(prompt_id="q", text="99+99+99=")], rewrites=2, step=0, seed=1)
    assert [v.template for v in full] == ["unchanged", "unchanged"]  # no room for a term, nor a wider operand


def evolving_source(*, buffer_size: int = 512, evolved_share: float = 0.8) -> EvolvingPrompts:
    prompts = [Prompt(prompt_id=f"t{i}", text=f"{i}+1=", reference=str(i + 1)) for i in range(20)]
    source = PromptSource(PromptLoader(prompts, seed=0, shuffle=True), CharTokenizer(), max_tokens=12, overlong="drop")
    config = EvaConfig(evolve_fraction=0.25, rewrites=4, evolved_share=evolved_share, buffer_size=buffer_size)
    return EvolvingPrompts(source, ArithmeticCreator(), config, seed=5)


def test_evolving_source_mixes_evolved_prompts_in_and_resumes_exactly(tmp_path):
    source = evolving_source()
    first = source.next_batch(8)
    assert not source.last_evolved_ids  # nothing evolved yet: all original
    rewards = np.tile(np.array([[0, 10, 5, 5]], dtype=float), (8, 1))
    rewards[0] = [3, 3, 3, 3]  # the least informative prompt: never drawn
    metrics = source.observe(first, rewards, np.ones_like(rewards, dtype=bool), step=0)
    assert metrics["eva/evolved_this_step"] == 8 and len(source.buffer) == 8  # 2 of 8 prompts x 4 rewrites
    assert {item.parent_id for item in source.buffer} <= {p.prompt_id for p in first.prompts[1:]}
    saved = json.loads(json.dumps(source.state_dict()))
    second = source.next_batch(8)
    evolved = [p for p in second.prompts if p.prompt_id in source.last_evolved_ids]
    assert len(evolved) == 6 and second.prompts[:6] == tuple(evolved)  # round(0.8 * 8) from the buffer, oldest first
    assert [p.prompt_id for p in evolved] == [item.prompt.prompt_id for item in source.created[:6]]
    assert second.token_ids[0] == tuple(CharTokenizer().encode_prompt(evolved[0]))
    rates = source.solve_rates(second, [[p.reference or ""] * 2 for p in second.prompts])
    assert rates == {"eva/evolved_solve_rate": 1.0, "eva/original_solve_rate": 1.0}
    resumed = evolving_source()
    resumed.load_state_dict(saved)
    assert resumed.next_batch(8) == second and resumed.state_dict() == source.state_dict()
    rows = [json.loads(line) for line in source.write(tmp_path / "evolved.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"id", "prompt", "reference", "parent_id", "step", "template"} <= rows[0].keys()


def test_a_full_buffer_drops_its_oldest_prompts():
    source = evolving_source(buffer_size=5)
    batch = source.next_batch(8)
    rewards = np.tile(np.arange(4, dtype=float), (8, 1)) * np.arange(8)[:, None]
    source.observe(batch, rewards, np.ones_like(rewards, dtype=bool), step=0)
    assert len(source.buffer) == 5 and source.metrics()["eva/dropped_buffer_full"] == 3
    assert list(source.buffer) == source.created[3:]


# ---------------------------------------------------------------- M_0's samples


class CountingEngine:
    def __init__(self):
        self.calls = 0

    def generate(self, token_ids, settings, seeds):
        from megatron_elo.rollout.engine import Sample

        self.calls += 1
        return [[Sample(token_ids=tuple(CharTokenizer().encode(str(seed % 10))), logprobs=(), finish_reason="stop")]
                for seed in seeds]

    def close(self):
        pass


def test_the_anchor_samples_k_answers_per_prompt_stored_and_reused(tmp_path):
    from megatron_elo.config.schema import ModelConfig, OpponentConfig
    from megatron_elo.players.answer_store import AnswerStore
    from megatron_elo.players.frozen import FrozenPlayer

    engine = CountingEngine()
    player = FrozenPlayer(OpponentConfig(name="initial", model=ModelConfig(path="/m")), tokenizer=CharTokenizer(),
                          store=AnswerStore(tmp_path / "a.sqlite"), run_seed=1, open_engine=lambda: engine, served=False)
    prompts = [Prompt(prompt_id=f"p{i}", text=f"{i}+1=") for i in range(3)]
    samples = player.samples(prompts, 4, seed=7)
    assert [[(r.prompt_id, r.sample_index) for r in group] for group in samples] == [
        [(p.prompt_id, j) for j in range(4)] for p in prompts]
    assert samples[0][0] == player.answers(prompts[:1], seed=7)["p0"]  # sample 0 is the single answer
    assert player.samples(prompts, 4, seed=7) == samples and engine.calls == 1  # the store has them all
    repeated = player.samples([prompts[1], prompts[0], prompts[1]], 4, seed=7)  # a batch across an epoch boundary
    assert repeated == [samples[1], samples[0], samples[1]] and engine.calls == 1


# ---------------------------------------------------------------- the look-ahead copy


def lookahead_round_trip(rank, world_size, model_dir):
    """Weights / Adam state / step after [train, look ahead 2 steps, restore, train] vs [train, train]; and from a
    fresh optimizer (no Adam state yet)."""
    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.players.lookahead import Lookahead
    from megatron_elo.trainer.build import build_policy_trainer
    from tests.test_pair_training import INPO, PAIR_TRAINER, make_pair_batch

    batches = [make_pair_batch(model_dir, seed=s) for s in range(4)]

    def trainer():
        return build_policy_trainer(model_dir, ParallelLayout(tp=1, pp=1, dp=1), PAIR_TRAINER, total_steps=10,
                                    pad_vocab_to_multiple_of=16, loss=INPO.loss, loss_config=INPO)

    def state(t):
        return ({n: p.detach().clone() for n, p in t.model.named_parameters()}, t.optimizer.full_state(), t.step)

    out = {}
    for warm in (1, 0):  # Adam state present, or none yet
        plain, ahead = trainer(), trainer()
        for t in (plain, ahead):
            for batch in batches[:warm]:
                t.train_step(batch)
        before = state(ahead)
        copy = Lookahead(ahead)
        ahead.train_step(batches[2])
        ahead.train_step(batches[3])
        moved = state(ahead)
        copy.restore()
        restored = state(ahead)
        plain.train_step(batches[1])
        ahead.train_step(batches[1])
        out[warm] = before, moved, restored, state(plain), state(ahead)
    return out


def same_state(a, b) -> bool:
    weights_a, adam_a, step_a = a
    weights_b, adam_b, step_b = b
    return (step_a == step_b and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
            and all(torch.equal(adam_a[k][x], adam_b[k][x]) for k in adam_a for x in adam_a[k]))


def test_lookahead_puts_the_trainer_back_bitwise(tmp_path):
    from megatron_elo.models.tiny import make_tiny_hf_model
    from megatron_elo.parallel.spawn import run_distributed
    from tests.test_pair_training import ARCH

    model_dir = str(make_tiny_hf_model(ARCH, tmp_path / "hf", seed=13))
    results = run_distributed(lookahead_round_trip, 1, model_dir, timeout=600)[0]
    for warm, (before, moved, restored, plain_after, ahead_after) in results.items():
        assert not same_state(before, moved), warm  # the look-ahead did move the weights
        assert same_state(before, restored), warm  # put back: weights, Adam moments, step
        assert same_state(plain_after, ahead_after), warm  # and the next update is the one without a look-ahead


# ---------------------------------------------------------------- config


def test_self_improvement_config_problems_are_reported_together():
    bad = {"tsr": ["algorithm.tsr.anchor=medium", "rollout.n_per_prompt=1"],
           "eva": ["algorithm.eva.evolve_fraction=0", "algorithm.eva.rewrites=0", "algorithm.eva.evolved_share=2",
                   "algorithm.eva.creator=nobody", "algorithm.pairs.rule=winner_vs_beaten", "algorithm.eva.buffer_size=0"],
           "evolve": ["algorithm.evolve.chain=0", "algorithm.evolve.refine_share=1.5", "algorithm.evolve.refine_template=/no/such.txt"]}
    fields = {"tsr": ["algorithm.tsr.anchor: opponent 'medium' serves", "rollout.n_per_prompt"],
              "eva": ["algorithm.eva.evolve_fraction", "algorithm.eva.rewrites", "algorithm.eva.evolved_share",
                      "algorithm.eva.creator: 'nobody'", "algorithm.pairs.rule", "algorithm.eva.buffer_size"],
              "evolve": ["algorithm.evolve.chain", "algorithm.evolve.refine_share", "algorithm.evolve.refine_template: file"]}
    for name, overrides in bad.items():
        with pytest.raises(ConfigError) as excinfo:
            validate(load_config(CONFIGS[name], overrides), check_paths=True)
        text = str(excinfo.value)
        for field in fields[name]:
            assert field in text, (name, field, text)
    with pytest.raises(ConfigError, match="algorithm.tsr.anchor: None is not an opponent"):
        validate(load_config(CONFIGS["tsr"], ["algorithm.tsr.anchor=null"]), check_paths=False)
    with pytest.raises(ConfigError, match="an LLM creator's prompts have no reference"):
        validate(load_config(CONFIGS["eva"], ["algorithm.eva.creator=medium"]), check_paths=False)
    for name in CONFIGS:
        assert validate(load_config(CONFIGS[name]), check_paths=False).algorithm.name == name


def test_methods_scoring_alone_read_the_reward_model_and_grade_with_the_llm_judge():
    from megatron_elo.config.validate_self_improve import scores_single_answers

    assert [scores_single_answers(load_config(CONFIGS[n])) for n in ("tsr", "evolve", "eva")] == [True, True, True]
    assert not scores_single_answers(load_config(CONFIGS["eva"], ["algorithm.eva.scorer=opponents"]))
    with pytest.raises(ConfigError, match="only methods that score answers alone"):
        validate(load_config(CONFIGS["eva"], ["algorithm.eva.scorer=opponents", "algorithm.reward_model.path=/rm"]),
                 check_paths=False)


def test_compare_runs_the_self_improvement_recipes():
    from megatron_elo.compare import method_overrides, parse_methods

    assert parse_methods("tsr,eva,evolve") == ("tsr", "eva", "evolve")
    cfg = load_config(CONFIGS["tsr"])
    assert method_overrides(cfg, "tsr") == ["algorithm.name=tsr"]


# ---------------------------------------------------------------- the recipes on tiny real engines (slow)


def small(name: str, root: Path, players: Path, **algorithm) -> object:  # noqa: F811
    """tiny_cpu_<name>.yaml shrunk onto the test's tiny players: 4 iterations of 8 prompts, eval and save every 2."""
    raw = read_yaml(CONFIGS[name])
    raw.update(output_dir=str(root), tracking={"backend": "none"})
    raw["model"]["path"] = str(players / "policy_init")
    for opponent in raw["opponents"]:
        opponent["model"]["path"] = str(players / ("policy_init" if opponent["name"] == "initial" else opponent["name"]))
    raw["prepare"]["snapshots"] = [{"path": str(players / n), "sft_steps": s}
                                   for n, s in (("weak", 3), ("policy_init", 5), ("medium", 8), ("strong", 12))]
    raw["trainer"].update(steps=4, lr=1e-3, lr_schedule="constant", warmup_steps=0, micro_batch_size=8, global_batch_size=16)
    raw["rollout"].update(prompts_per_step=8, n_per_prompt=4)
    raw["eval"].update(every_steps=2, num_prompts=8)
    raw["checkpoint"].update(every_steps=2)
    raw["data"]["synthetic"].update(num_train=40)
    raw["algorithm"][name].update(algorithm)
    return validate(config_from_dict(raw))


def run_recipe(rank, world_size, cfg, stop_after=None):
    from importlib import import_module

    from tests.recording import engine_gap, measure_after_last_step, recorded_run

    module = import_module(f"megatron_elo.recipes.{cfg.algorithm.name}")
    recipe_class = getattr(module, {"tsr": "TsrRecipe", "eva": "EvaRecipe", "evolve": "EvolveRecipe"}[cfg.algorithm.name])
    gap = measure_after_last_step(recipe_class, cfg.trainer.steps, lambda recipe: engine_gap(recipe.policy))  # after the last sync, engines up
    runner, summary, records = recorded_run(cfg, stop_after)
    recipe = runner.recipe
    weights = {n: p.detach().clone() for n, p in recipe.trainer.model.named_parameters()}
    position = recipe.prompts.state_dict() if recipe.prompts is not None else None
    gaps = {"policy": gap["value"]} if "value" in gap else {}
    return summary, weights, [dict(r.extra_metrics) for r in records], recipe.trainer.step, position, gaps


@pytest.fixture(scope="module")
def straight_runs(players, tmp_path_factory):  # noqa: F811
    """Each recipe's uninterrupted one-process run, made on first use: name -> (config, its results)."""
    from megatron_elo.parallel.spawn import run_distributed

    made = {}

    def straight(name: str):
        if name not in made:
            cfg = small(name, tmp_path_factory.mktemp(f"straight_{name}"), players)
            made[name] = cfg, run_distributed(run_recipe, 1, cfg, timeout=900)[0]
        return made[name]

    return straight


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tsr", "eva", "evolve"])
def test_recipe_trains_and_a_resumed_run_is_the_same_run(name, players, tmp_path_factory, straight_runs):  # noqa: F811
    from megatron_elo.parallel.spawn import run_distributed

    straight = straight_runs(name)[1]
    resumed_cfg = small(name, tmp_path_factory.mktemp("resumed"), players)
    first = run_distributed(run_recipe, 1, resumed_cfg, 3, timeout=900)[0]  # stopped after iteration 3: step 2's checkpoint
    second = run_distributed(run_recipe, 1, resumed_cfg, timeout=900)[0]
    summary, weights, metrics, optimizer_steps, position, gaps = straight
    assert first[0] == {"finished": False, "step": 3} and second[0]["finished"]
    assert all(torch.equal(second[1][k], weights[k]) for k in weights)  # bitwise
    assert second[3] == optimizer_steps >= 1 and second[4] == position and second[0]["evals"] == summary["evals"]
    assert second[2][-1] == metrics[-1]  # the replayed iteration's metrics
    assert gaps["policy"] < 1e-3, gaps  # the engine samples with the trained weights (TSR: not the look-ahead's)
    last, run_dir = metrics[-1], Path(summary["run_dir"])
    if name == "tsr":
        assert {"tsr/phase1_anchored_rejection", "tsr/phase2_future_chosen", "tsr/phase2_score_gap",
                "tsr/score_mean/anchor", "tsr/score_mean/future"} <= last.keys()
        assert any(m["tsr/phase1_pairs"] > 0 for m in metrics)  # (which side fires when: the hand-built cases above)
    if name == "eva":
        assert 0 < last["eva/evolved_prompts"] <= round(0.8 * 8)
        assert last["eva/created"] == sum(m["eva/evolved_this_step"] for m in metrics) <= 4 * 2 * 4  # 2 of 8 x 4, 4 steps
        rows = (run_dir / "artifacts" / "evolved_prompts.jsonl").read_text().splitlines()
        assert len(rows) == last["eva/created"] and {"eva.png", "eva_history.csv"} <= {p.name for p in (run_dir / "artifacts").iterdir()}
    if name == "evolve":
        assert {"evolve/refine_win_rate/1", "evolve/refine_win_rate/2", "evolve/score_mean/2"} <= last.keys()
        assert last["evolve/refine_pairs"] > 0
        assert {"direct", "refined_1", "refined_2"} == set(summary["evals"][-1]["per_player"])


def test_full_scale_configs_validate_with_the_authors_settings():
    eva, tsr, evolve = (validate(load_config(ROOT / "configs" / f"qwen2.5-7b_{n}.yaml"), check_paths=False)
                        for n in ("eva", "tsr", "evolve"))
    assert (eva.algorithm.pairs.beta, eva.trainer.lr, eva.algorithm.pairs.epochs, eva.rollout.n_per_prompt) == (0.05, 5e-7, 2, 6)
    assert (eva.algorithm.eva.evolve_fraction, eva.algorithm.eva.rewrites, eva.algorithm.eva.creator) == (0.25, 4, "qwen2.5-32b")
    assert tsr.rollout.n_per_prompt == 7 and tsr.algorithm.tsr.anchor == "initial"
    assert {o.name: o.engine.first_device for o in tsr.opponents}["initial"] == 6
    assert evolve.rollout.max_prompt_tokens + evolve.rollout.max_new_tokens <= evolve.rollout.engine.max_model_len
    for cfg in (eva, tsr, evolve):
        assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp, cfg.cluster.nodes) == (2, 2, 2, 2)


@pytest.mark.slow
def test_tsr_on_two_tensor_parallel_ranks_is_the_one_process_run(straight_runs, tmp_path):
    """Trainer TP = 2 with a TP = 2 colocated engine: the driver's phases shared with the other rank, the look-ahead
    copied and put back per TP shard, both syncs to the sharded engine: the same evaluations and final weights
    as one process (the opponents' and M_0's answers from that run's store, so no server starts)."""
    from safetensors.torch import load_file

    from megatron_elo.parallel.spawn import run_distributed

    cfg, straight = straight_runs("tsr")
    raw = tensor_parallel_twin(cfg, straight[0]["run_dir"], tmp_path)
    driver, other = run_distributed(run_recipe, 2, validate(config_from_dict(raw), world_size=2), timeout=900)
    served = {k for k in driver[2][-1] if k.startswith("engine/restarts/")}  # opponents are served in a world
    assert driver[0]["evals"] == straight[0]["evals"]  # every evaluation
    assert {k: v for k, v in driver[2][-1].items() if k not in served} == straight[2][-1]  # the last iteration's metrics
    assert driver[3] == straight[3] and driver[5]["policy"] < 1e-3
    assert not (tmp_path / "engine_logs").exists()  # every opponent / M_0 answer came from the store
    ours, theirs = (load_file(str(Path(s["export"]) / "model.safetensors")) for s in (driver[0], straight[0]))
    for name, weight in theirs.items():  # TP's reordered fp32 sums, through 8 Adam steps (measured: 5.4e-6 at most)
        torch.testing.assert_close(ours[name], weight, rtol=0, atol=2e-5)
