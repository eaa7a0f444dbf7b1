"""Prompt files (jsonl / parquet), chat-templated tokenization, the seeded resumable DP-sharded loader,
and the DALI backend giving the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_elo.data.loader import PromptLoader, dp_shard, rows_at
from megatron_elo.data.prompts import PromptFields, PromptFileError, prompt_messages, read_prompts
from megatron_elo.flow import ChatMessage, Prompt

ROWS = [
    {"id": "a", "question": "What is 2+2?", "answer": "4"},
    {"id": "b", "question": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}],
     "answer": "2"},
    {"question": "No id here.", "answer": "x"},
]
FIELDS = PromptFields(prompt="question", reference="answer")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- files


def test_jsonl_and_parquet_give_the_same_prompts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from_jsonl = read_prompts(write_jsonl(tmp_path / "p.jsonl", ROWS), fields=FIELDS)
    texts, messages = [ROWS[0], ROWS[2]], [ROWS[1]]  # a parquet column holds one type: text or message lists
    pq.write_table(pa.Table.from_pylist(texts), tmp_path / "texts.parquet")
    pq.write_table(pa.Table.from_pylist(messages), tmp_path / "messages.parquet")
    assert read_prompts(tmp_path / "texts.parquet", fields=FIELDS) == [from_jsonl[0], from_jsonl[2]]
    assert read_prompts(tmp_path / "messages.parquet", fields=FIELDS) == [from_jsonl[1]]
    assert [p.prompt_id for p in from_jsonl[:2]] == ["a", "b"] and from_jsonl[2].prompt_id.startswith("h")
    assert [p.reference for p in from_jsonl] == ["4", "2", "x"]


def test_ids_without_an_id_field_are_stable_content_hashes(tmp_path):
    first = read_prompts(write_jsonl(tmp_path / "a.jsonl", ROWS), fields=FIELDS)
    again = read_prompts(write_jsonl(tmp_path / "b.jsonl", list(reversed(ROWS))), fields=FIELDS)
    assert first[2].prompt_id == again[0].prompt_id


def test_messages_round_trip_and_text_gets_a_user_turn(tmp_path):
    prompts = read_prompts(write_jsonl(tmp_path / "p.jsonl", ROWS), fields=FIELDS)
    assert prompts[1].messages == (ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Name a prime."))
    assert prompts[1].text == "Name a prime."  # the last user turn: what a judge is shown
    assert prompts[0].messages == () and prompts[0].text == "What is 2+2?"
    assert prompt_messages(prompts[1]) == ROWS[1]["question"]
    assert prompt_messages(prompts[1], system_prompt="S") == ROWS[1]["question"]  # its own system turn wins
    assert prompt_messages(prompts[0], system_prompt="S") == [{"role": "system", "content": "S"},
                                                               {"role": "user", "content": "What is 2+2?"}]


def test_a_text_prompt_that_looks_like_json_messages_stays_text():
    looks_like = '[{"role": "user", "content": "hi"}]'  # e.g. a question about chat formats
    assert prompt_messages(Prompt(prompt_id="x", text=looks_like)) == [{"role": "user", "content": looks_like}]


@pytest.mark.parametrize("content, fields, message", [
    ('{"question": "ok", "answer": "1"}\n{not json\n', FIELDS, r"p.jsonl:2: not valid JSON"),
    ('{"prompt": "hi"}\n', FIELDS, r"p.jsonl:1: no field 'question' \(has \['prompt'\]\); set data.prompt_field"),
    ('{"question": "hi"}\n', FIELDS, r"no field 'answer' \(data.reference_field\)"),
    ('{"question": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "answer": 1}\n', FIELDS,
     "does not end with a user message"),
    ('{"question": [{"role": "robot", "content": "hi"}], "answer": 1}\n', FIELDS, "role 'robot'"),
    ('{"question": 7, "answer": 1}\n', FIELDS, "neither a string nor"),
    ('{"question": "  ", "answer": 1}\n', FIELDS, "is empty"),
    ('{"id": 1, "question": "a", "answer": 1}\n{"id": 1, "question": "b", "answer": 1}\n', FIELDS, "p.jsonl:2: prompt id '1' repeats .*p.jsonl:1"),
    ("\n", FIELDS, "no prompts"),
    ("[1, 2]\n", FIELDS, "a JSON list, expected an object"),
])
def test_bad_prompt_files_name_the_row_and_the_fix(tmp_path, content, fields, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path, fields=fields)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(PromptFileError, match="no such file; check data.train_path"):
        read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptFileError, match="not a readable parquet file"):
        read_prompts(tmp_path / "bad.parquet")


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from megatron_elo.models.tiny import make_tiny_tokenizer

    return str(make_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_chat_tokenizer_applies_each_players_template(tokenizer_dir):
    import transformers

    from megatron_elo.data.tokenizer import ChatTokenizer

    hf = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = Prompt(prompt_id="a", text="2+2?")
    ids = ChatTokenizer(tokenizer_dir, system_prompt="Be brief.").encode_prompt(prompt)
    assert hf.decode(ids) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert hf.decode(ChatTokenizer(tokenizer_dir, apply_chat_template=False).encode_prompt(prompt)) == "2+2?"
    chat = ChatTokenizer(tokenizer_dir)
    answer = hf.encode("4", add_special_tokens=False) + [chat.eos_id] + hf.encode("junk", add_special_tokens=False)
    assert chat.decode(answer) == "4"


def test_a_tokenizer_without_a_template_is_refused(tokenizer_dir, tmp_path):
    import transformers

    from megatron_elo.data.tokenizer import ChatTokenizer

    hf = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    hf.chat_template = None
    hf.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template; set data.apply_chat_template=false"):
        ChatTokenizer(str(tmp_path))


# ---------------------------------------------------------------- loader


PROMPTS = [Prompt(prompt_id=str(i), text=f"q{i}") for i in range(10)]


def test_each_epoch_is_a_seeded_permutation_and_batches_cross_epochs():
    loader = PromptLoader(PROMPTS, seed=7, shuffle=True)
    seen = [p.prompt_id for _ in range(5) for p in loader.next_batch(4)]  # 20 prompts: two whole epochs
    assert sorted(seen[:10]) == sorted(seen[10:]) == sorted(p.prompt_id for p in PROMPTS)
    assert seen[:10] != seen[10:]  # reshuffled
    again = PromptLoader(PROMPTS, seed=7, shuffle=True)
    assert [p.prompt_id for _ in range(5) for p in again.next_batch(4)] == seen
    assert [p.prompt_id for p in PromptLoader(PROMPTS, seed=7, shuffle=False).next_batch(3)] == ["0", "1", "2"]


def test_resumed_loader_continues_exactly():
    straight = PromptLoader(PROMPTS, seed=1, shuffle=True)
    expected = [straight.next_batch(3) for _ in range(6)]
    first = PromptLoader(PROMPTS, seed=1, shuffle=True)
    head = [first.next_batch(3) for _ in range(4)]
    resumed = PromptLoader(PROMPTS, seed=1, shuffle=True)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [resumed.next_batch(3) for _ in range(2)] == expected
    old_form = PromptLoader(PROMPTS, seed=1, shuffle=True)
    old_form.load_state_dict({"epoch": 1, "position": 2})  # checkpoints written before "absolute"
    assert old_form.next_batch(3) == [PROMPTS[i] for i in rows_at(12, 3, num_rows=10, seed=1, shuffle=True)]


def test_dp_shards_are_contiguous_and_cover_the_batch():
    batch = list(range(8))
    assert [dp_shard(batch, dp_rank=r, dp=4) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="multiple of parallel.dp"):
        dp_shard(batch, dp_rank=0, dp=3)


def test_dali_pipeline_gives_the_default_loaders_batches(tmp_path):
    pytest.importorskip("nvidia.dali")
    from megatron_elo.data.dali import DaliPromptLoader, write_token_shards

    token_rows = [[100 + i] * (1 + i % 4) for i in range(len(PROMPTS))]
    write_token_shards(token_rows, tmp_path)
    default = PromptLoader(PROMPTS, seed=3, shuffle=True)
    dali = DaliPromptLoader(PROMPTS, tmp_path, batch_size=4, seed=3, shuffle=True, pad_id=0)
    for _ in range(4):  # 16 prompts: crosses an epoch
        batch = dali.next_batch(4)
        assert batch == default.next_batch(4)
        assert dali.last_ids == [token_rows[int(p.prompt_id)] for p in batch]
        assert dali.last_tokens.shape == (4, max(len(ids) for ids in dali.last_ids))
    resumed = DaliPromptLoader(PROMPTS, tmp_path, batch_size=4, seed=3, shuffle=True, pad_id=0)
    resumed.load_state_dict(dali.state_dict())
    assert resumed.next_batch(4) == default.next_batch(4)
    with pytest.raises(ValueError, match="shards hold 10 prompts, the prompt file 9"):
        DaliPromptLoader(PROMPTS[:9], tmp_path, batch_size=4, seed=3, shuffle=True, pad_id=0)


def test_dali_refuses_shards_of_another_tokenizer_or_prompt_file(tmp_path):
    pytest.importorskip("nvidia.dali")
    from megatron_elo.data.dali import DaliPromptLoader, write_token_shards

    def encode(prompt):  # stands in for the run's tokenizer + chat template
        return [1, *(ord(ch) % 97 for ch in prompt.text)]

    write_token_shards([encode(p) for p in PROMPTS], tmp_path, prompts=PROMPTS)
    loader = DaliPromptLoader(PROMPTS, tmp_path, batch_size=2, seed=0, shuffle=False, pad_id=0, encode=encode)
    assert loader.next_batch(2) == PROMPTS[:2] and loader.last_ids == [encode(p) for p in PROMPTS[:2]]
    with pytest.raises(ValueError, match=r"row 0 .*another tokenizer; delete .* to re-tokenize"):
        DaliPromptLoader(PROMPTS, tmp_path, batch_size=2, seed=0, shuffle=False, pad_id=0, encode=lambda p: [2, *encode(p)[1:]])
    edited = [*PROMPTS[:-1], Prompt(prompt_id=PROMPTS[-1].prompt_id, text=PROMPTS[-1].text + "!")]  # same count, last row changed
    with pytest.raises(ValueError, match="written for another prompt file"):
        DaliPromptLoader(edited, tmp_path, batch_size=2, seed=0, shuffle=False, pad_id=0, encode=encode)


def test_chat_template_kwargs_reach_the_players_and_the_judges_templates(tmp_path):
    """model.chat_template_kwargs (e.g. Qwen3's enable_thinking: false) is passed to the chat template
    of a player's tokenizer and of the LLM judge's prompts; it is a mapping in the config."""
    import transformers

    from megatron_elo.config.loader import ConfigError, load_config
    from megatron_elo.data.tokenizer import ChatTokenizer
    from megatron_elo.judges.llm import LLMJudge, load_template
    from megatron_elo.models.tiny import make_tiny_tokenizer

    tokenizer_dir = str(make_tiny_tokenizer(tmp_path / "tok"))
    hf = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = Prompt(prompt_id="p", text="2+2?")
    thinking = hf.decode(ChatTokenizer(tokenizer_dir).encode_prompt(prompt))
    direct = hf.decode(ChatTokenizer(tokenizer_dir, template_kwargs={"enable_thinking": False}).encode_prompt(prompt))
    assert "<think>" not in thinking and direct == thinking + "<think>\n\n</think>\n\n"
    judge = LLMJudge(backend=None, tokenizer=hf, template=load_template(None), template_kwargs={"enable_thinking": False})
    assert judge.render("q", "a", "b").endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    assert load_config(tiny, ["model.chat_template_kwargs={enable_thinking: false}"]).model.chat_template_kwargs == \
        {"enable_thinking": False}
    with pytest.raises(ConfigError, match="model.chat_template_kwargs: expected a mapping"):
        load_config(tiny, ["model.chat_template_kwargs=true"])


# ---------------------------------------------------------------- splits


def _tiny(*overrides):
    from megatron_elo.config.loader import load_config

    return load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml", list(overrides))


def test_the_synthetic_held_out_and_validation_problems_are_never_trained_on():
    """Before: training and "held-out" problems were drawn from the same 441 sums (99 of 100 shared)."""
    from megatron_elo.data.source import load_prompt_sets
    from megatron_elo.tasks.arithmetic import make_prompts, split_pairs

    train, held_out = load_prompt_sets(_tiny())
    _, validation = load_prompt_sets(_tiny("eval.split=validation"))
    texts = {name: {p.text for p in prompts} for name, prompts in
             (("train", train), ("held_out", held_out), ("validation", validation))}
    assert len(texts["held_out"]) == len(held_out) == 100 and len(texts["validation"]) == len(validation) == 100
    assert not texts["train"] & texts["held_out"] and not texts["train"] & texts["validation"]
    assert not texts["held_out"] & texts["validation"]
    assert len(texts["train"]) == 241  # 2000 draws cover the 441 - 200 training problems
    pairs = split_pairs(max_operand=20, seed=0, num_eval=100, num_validation=100)
    sft = {p.text for p in make_prompts(5000, seed=17, split="sft", pairs=pairs["train"])}  # what `prepare` draws
    assert sft == texts["train"]
    assert {p.prompt_id.split("-")[0] for p in held_out} == {"eval"}
    with pytest.raises(ValueError, match="leave none of the 441"):
        split_pairs(max_operand=20, seed=0, num_eval=400, num_validation=41)


def test_evaluation_files_overlapping_training_are_warned_about_and_validation_needs_a_file(tmp_path, caplog):
    from megatron_elo.config.validate import ConfigError, validate
    from megatron_elo.data.source import load_prompt_sets

    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": f"q{i}"} for i in range(5)])
    held = write_jsonl(tmp_path / "held.jsonl", [{"id": "h0", "prompt": "q1"}, {"id": "h1", "prompt": "new"}])
    files = ("data.format=jsonl", f"data.train_path={train}", f"data.eval_path={held}", "judge.kind=llm",
             "judge.model.path=null", "judge.model.arch.vocab_size=128")
    with pytest.raises(ConfigError, match="data.validation_path: eval.split=validation"):
        validate(_tiny(*files, "eval.split=validation"), check_paths=False)
    with caplog.at_level("WARNING"):
        _, evaluated = load_prompt_sets(_tiny(*files))
    assert [p.prompt_id for p in evaluated] == ["h0", "h1"]
    assert "1 of the 2 held_out prompts" in caplog.text
