"""Pairs from games (tournament brackets, rules, ties and invalid verdicts), pair files (every layout,
errors naming the row and field, resumable order) and the pair recipes' config checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_elo.config.loader import config_from_dict, read_yaml
from megatron_elo.config.validate import ConfigError, validate
from megatron_elo.data.pairs import PairFields, PairSource, read_pairs
from megatron_elo.data.prompts import PromptFileError
from megatron_elo.matchmaking.tournament import Knockout
from megatron_elo.signals.pairs import pairs_from_rewards, pairs_from_tournament
from megatron_elo.tasks.arithmetic import CharTokenizer


def play(samples: int, strength: list[float], undecided: set[tuple[int, int]] = frozenset()):
    """A knock-out where the stronger sample wins, except the listed games, which tie."""
    bracket, rounds = Knockout(samples), 0
    while not bracket.done:
        games = bracket.next_games()
        bracket.record([None if (a, b) in undecided else (a if strength[a] > strength[b] else b) for a, b in games])
        rounds += 1
    return bracket.result(), rounds


def test_a_knockout_finds_the_best_and_the_worst_in_n_minus_1_plus_half_games():
    strength = [3, 7, 1, 5, 6, 0, 4, 2]  # best: sample 1; worst: sample 5
    result, rounds = play(8, strength)
    assert (result.champion, result.last) == (1, 5)
    assert len(result.games) == 7 + 3 and rounds == 3  # both brackets side by side
    assert result.champion_settled and result.last_settled
    assert result.win_rates()[1] == 1.0 and result.win_rates()[5] == 0.0
    first_round = [(w, lost) for w, lost, _ in result.games[:4]]
    assert first_round == [(1, 0), (3, 2), (4, 5), (6, 7)]  # (winner, loser) of 0-1, 2-3, 4-5, 6-7
    three, _ = play(3, [1, 2, 3])  # a bye: 2 games, the first round's loser is last
    assert (three.champion, three.last, len(three.games)) == (2, 0, 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        Knockout(1)


def test_undecided_games_unsettle_the_standing_and_make_no_pairs():
    # the final (1 vs 4) ties: 1 goes on as first shown, but it did not win it
    result, _ = play(8, [3, 7, 1, 5, 6, 0, 4, 2], undecided={(1, 4)})
    assert result.champion == 1 and not result.champion_settled and result.last_settled
    signal = pairs_from_tournament([result], rule="best_vs_worst")
    assert signal.pairs == () and signal.prompts_without_pair == 1 and signal.undecided_games == 1
    beaten = pairs_from_tournament([result], rule="winner_vs_beaten")
    assert sorted((p.chosen, p.rejected) for p in beaten.pairs) == [(1, 0), (1, 3)]  # not 4: the final tied
    every = pairs_from_tournament([result], rule="all_decided")
    assert len(every.pairs) == 9 and every.decided_games == 9


def test_pairs_from_rewards_against_opponents():
    rewards = np.array([[1.0, 0.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, True], [True, True, True, True], [False, True, True, False]])
    signal = pairs_from_rewards(rewards, valid, rule="best_vs_worst")
    assert [(p.prompt_index, p.chosen, p.rejected) for p in signal.pairs] == [(0, 0, 1), (2, 1, 2)]
    assert signal.prompts_without_pair == 1 and signal.undecided_games == 2
    assert (signal.pairs[0].chosen_win, signal.pairs[0].rejected_win) == (1.0, 0.0)
    every = pairs_from_rewards(rewards, valid, rule="all_decided")
    assert [(p.chosen, p.rejected) for p in every.pairs if p.prompt_index == 0] == [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]
    with pytest.raises(ValueError, match="winner_vs_beaten"):
        pairs_from_rewards(rewards, valid, rule="winner_vs_beaten")


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_pair_files_in_every_layout(tmp_path):
    user = {"role": "user", "content": "2+3="}
    rows = [
        {"id": "a", "prompt": "1+1=", "chosen": "2", "rejected": "3"},
        {"id": "b", "prompt": [user], "chosen": [{"role": "assistant", "content": "5"}],
         "rejected": [{"role": "assistant", "content": "6"}]},
        {"prompt": "2+3=", "chosen": [user, {"role": "assistant", "content": "5"}],  # UltraFeedback-binarized
         "rejected": [user, {"role": "assistant", "content": "4"}]},
    ]
    pairs = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(p.prompt.text, p.chosen, p.rejected) for p in pairs] == [("1+1=", "2", "3"), ("2+3=", "5", "6"),
                                                                       ("2+3=", "5", "4")]
    implicit = read_pairs(write_jsonl(tmp_path / "i.jsonl", [{k: v for k, v in rows[2].items() if k != "prompt"}]),
                          fields=PairFields(prompt=None))
    assert implicit[0].prompt.messages[0].content == "2+3=" and implicit[0].chosen == "5"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([rows[0]]), tmp_path / "p.parquet")
    assert read_pairs(tmp_path / "p.parquet")[0].rejected == "3"


@pytest.mark.parametrize("row, fields, message", [
    ({"prompt": "1+1=", "chosen": "2"}, PairFields(), r"p.jsonl:2: no field 'rejected'.*rejected_field"),
    ({"prompt": "1+1=", "chosen": "", "rejected": "3"}, PairFields(), r"p.jsonl:2: field 'chosen' is empty"),
    ({"prompt": "1+1=", "chosen": [{"role": "user", "content": "x"}], "rejected": "3"}, PairFields(),
     r"p.jsonl:2: field 'chosen' is neither a string nor chat messages ending in an assistant message"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "1"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "2"}]}, PairFields(prompt=None),
     r"p.jsonl:2: 'chosen' and 'rejected' differ before their answers"),
    ({"chosen": "2", "rejected": "3"}, PairFields(), r"p.jsonl:2: no prompt.*set algorithm.pairs.prompt_field"),
])
def test_a_bad_pair_row_is_named(tmp_path, row, fields, message):
    good = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    if fields.prompt is None:
        good = {side: [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": answer}]
                for side, answer in (("chosen", "2"), ("rejected", "3"))}
    with pytest.raises(PromptFileError, match=message):
        read_pairs(write_jsonl(tmp_path / "p.jsonl", [good, row]), fields=fields)


def test_the_pair_source_tokenises_counts_and_resumes(tmp_path):
    rows = read_pairs(write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "123456"}
                                                           for i in range(5)]))
    tokenizer = CharTokenizer()
    source = PairSource(rows, tokenizer, seed=3, shuffle=True, max_prompt_tokens=None, overlong="drop", max_answer_tokens=4)
    first = source.next_pairs(3)
    assert all(ids[0] == tokenizer.bos_id for ids in first.prompt_ids)
    assert all(c[-1] == tokenizer.eos_id for c in first.chosen_ids) and all(len(r) == 4 for r in first.rejected_ids)
    assert source.truncated_answers == 3
    state = source.state_dict()
    after = source.next_pairs(4)  # crosses into the second epoch
    again = PairSource(rows, tokenizer, seed=3, shuffle=True, max_prompt_tokens=None, overlong="drop", max_answer_tokens=4)
    again.load_state_dict(state)
    assert again.next_pairs(4) == after
    tokens, mask, _ = first.tensors([0, 1], pad_id=tokenizer.pad_id)
    assert tokens.shape[0] == 4 and mask[0].sum() == len(first.chosen_ids[0]) and mask[1].sum() == 4


def _tiny(**changes) -> dict:
    from pathlib import Path

    raw = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu_dpo.yaml")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    return raw


def test_the_pair_recipes_configs_are_checked_up_front(tmp_path):
    raw = _tiny(trainer__micro_batch_size=3, trainer__global_batch_size=12, trainer__kl_coef=0.1,
                rollout__n_per_prompt=1, rollout__overlap_judging=True, algorithm__pairs__games="opponents",
                algorithm__pairs__rule="winner_vs_beaten")
    with pytest.raises(ConfigError) as err:
        validate(config_from_dict(raw), check_paths=False)
    text = str(err.value)
    for expected in ("trainer.micro_batch_size=3: a pair's chosen and rejected rows share a micro-batch",
                     "trainer.kl_coef / trainer.entropy_coef", "rollout.n_per_prompt=1: a pair needs two samples",
                     "rule=winner_vs_beaten: needs algorithm.pairs.games=tournament", "rollout.overlap_judging: the GRPO"):
        assert expected in text
    offline = _tiny(algorithm__name="pairs_offline", algorithm__pairs__loss="sppo",
                    algorithm__pairs__path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError) as err:
        validate(config_from_dict(offline))
    assert "loss=sppo / reference=previous_iterate measure against the start" in str(err.value)
    assert f"algorithm.pairs.path: file {str(tmp_path / 'missing.jsonl')!r} does not exist" in str(err.value)
    assert validate(config_from_dict(_tiny()), check_paths=False).algorithm.pairs.loss == "dpo"


def test_compare_methods_name_the_pair_losses_and_their_children_resolve_alike():
    from pathlib import Path

    from megatron_elo.cli import load_and_validate
    from megatron_elo.compare import child_config, config_differences, method_overrides, parse_methods
    from megatron_elo.config.loader import dump_yaml

    assert parse_methods("elo_evolve, dpo,simpo") == ("elo_evolve", "dpo", "simpo")
    with pytest.raises(ValueError, match=r"--methods: unknown 'kto'"):
        parse_methods("dpo,kto")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    cfg = load_and_validate(config, [], check_paths=False)
    for method in ("elo_evolve", "dpo", "simpo", "sppo", "inpo"):
        expected = child_config(cfg, method, 7)
        overrides = [*method_overrides(cfg, method), "seed=7", f"run_name=compare_{method}_s7"]
        resolved = load_and_validate(config, overrides, check_paths=False)  # what the child process trains with
        assert config_differences(expected, dump_yaml(resolved)) == [], method
    assert child_config(cfg, "sppo", 7).algorithm.pairs.beta == 0.001  # the authors' eta 1000
    assert child_config(cfg, "simpo", 7).algorithm.name == "pairs_online"
