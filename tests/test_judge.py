"""The LLM judge: verdict parsing, templates, position swap, invalid and failed verdicts dropped and
counted (never a win), log-prob verdicts equal to the model's own P(A) / P(B) on a real vLLM engine,
and served engines: health checks, retries, timeouts."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from megatron_elo.flow import Game, Prompt, Response
from megatron_elo.judges.llm import (
    EngineJudgeBackend,
    JudgeReply,
    LLMJudge,
    load_template,
    parse_verdict,
    read_reply,
)
from megatron_elo.parallel.spawn import free_port
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.rollout.served import CompletionsClient, ServedEngine, ServedRolloutEngine, ServerError
from tests.fake_openai_server import make_server

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import transformers

    from megatron_elo.models.tiny import make_tiny_tokenizer

    return transformers.AutoTokenizer.from_pretrained(str(make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


@pytest.mark.parametrize("text, expected", [
    ("Answer B is clearer.\n[[B]]", "B"),
    ("[[ a ]]", "A"),
    ("Both are equally good. [[C]]", "tie"),
    ("Verdict: A", "A"),
    ("The winner is Answer B.", "B"),
    ("Final verdict: tie", "tie"),
    ("B", "B"),
    ("tie.", "tie"),
    ("It is a draw.", "tie"),
    ("[[A]] ... on reflection [[B]]", None),     # two different verdicts: ambiguous
    ("Verdict: A. Winner: B", None),
    ("I cannot decide", None),
    ("", None),
    ("Answer A is longer but Answer B is correct", None),  # no verdict given
    ("Neither answer is a complete solution", None),       # the English article is not a verdict
    ("The better answer is a concise one", None),
    ("Let me draw a comparison first.", None),             # "draw" before the end is not a tie
    ("Both are equally good.", "tie"),
    ("The better answer is B.", "B"),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_template_default_and_bad_templates(tmp_path):
    assert "{answer_b}" in load_template(None)
    with pytest.raises(FileNotFoundError, match="judge.template: no file"):
        load_template(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("Q: {question} A: {answer_a} {answer_c}")
    with pytest.raises(ValueError, match=r"must use exactly \['answer_a', 'answer_b', 'question'\]"):
        load_template(str(bad))


def _games(count: int) -> list[Game]:
    games = []
    for i in range(count):
        prompt = Prompt(prompt_id=f"p{i}", text=f"question {i}")
        games.append(Game(game_id=i, prompt=prompt, policy=Response(player="policy", prompt_id=prompt.prompt_id, sample_index=0,
                                                                    text=f"policy-answer-{i}"),
                          opponent=Response(player="weak", prompt_id=prompt.prompt_id, sample_index=0, text=f"opp-answer-{i}")))
    return games


class ScriptedBackend:
    """Replies chosen by which answer the judge sees first (by index of the game)."""

    def __init__(self, first: list[str], second: list[str], *, fail: bool = False):
        self.first, self.second, self.fail, self.prompts = first, second, fail, []

    def complete(self, prompts, *, max_new_tokens):
        if self.fail:
            raise ConnectionError("judge server down")
        self.prompts = list(prompts)
        return [JudgeReply(text) for text in self.first + self.second]


def test_swap_agreement_flip_invalid_and_failure(tokenizer):
    backend = ScriptedBackend(first=["[[A]]", "[[A]]", "[[B]]", "nonsense", "[[C]]"],
                              second=["[[B]]", "[[A]]", "[[A]]", "[[B]]", "[[C]]"])
    judge = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), swap_positions=True)
    verdicts = judge.judge_pairs(_games(5), np.random.default_rng(0))
    # game 0: A then B -> policy both times; 1: A then A -> flips with the order -> tie;
    # 2: B then A -> opponent; 3: unparsable first reply -> dropped; 4: tie both times
    assert [v.winner for v in verdicts] == ["policy", "tie", "opponent", None, "tie"]
    assert [v.valid for v in verdicts] == [True, True, True, False, True]
    assert "invalid judge reply" in verdicts[3].detail and judge.stats.invalid == 1 and judge.stats.order_flips == 1
    # the policy's answer is shown first in the first half of the prompts and second in the other half
    first, second = backend.prompts[0], backend.prompts[5]
    assert first.index("policy-answer-0") < first.index("opp-answer-0")
    assert second.index("opp-answer-0") < second.index("policy-answer-0")
    assert first.startswith("<|im_start|>user\n") and first.endswith("<|im_start|>assistant\n")

    failing = LLMJudge(backend=ScriptedBackend([], [], fail=True), tokenizer=tokenizer, template=load_template(None))
    verdicts = failing.judge_pairs(_games(3))
    assert not any(v.valid for v in verdicts)
    assert "ConnectionError: judge server down" in verdicts[0].detail and failing.stats.failed == 3
    assert failing.stats.as_metrics()["judge/failed_rate"] == 1.0


@pytest.mark.parametrize("reply, expected", [
    (JudgeReply("Answer B is clearer. [[B]]", truncated=True), "B"),      # cut after its verdict: counts
    (JudgeReply("Verdict: A. Let me explain why in", truncated=True), None),  # cut, no bracketed verdict
    (JudgeReply("Verdict: A", truncated=False), "A"),
    (JudgeReply("<think>A looks right... no, B</think>\n[[B]]"), "B"),     # the think block is skipped
    (JudgeReply("<think>The better answer is A because"), None),          # it never closed
    (JudgeReply("<think>[[A]]</think> then <think>hmm [[B]]"), None),
])
def test_cut_replies_and_think_blocks(reply, expected):
    assert read_reply(reply)[0] == expected


def test_without_the_swap_the_policy_answer_goes_to_a_seeded_side_per_game(tokenizer):
    """swap_positions=false used to show the policy's answer first in every game (a position bias the
    judge never saw the other way). Now a coin per game, seeded: both sides occur, the same game gets
    the same side in any batch and another seed moves some games, and the verdict maps through it."""
    games = _games(40)
    backend = ScriptedBackend(["[[A]]"] * 40, [])
    judge = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), swap_positions=False, seed=3)
    verdicts = judge.judge_pairs(games)
    sides = [judge.policy_shown_first(g) for g in games]
    assert 10 < sum(sides) < 30
    for game, first, prompt, verdict in zip(games, sides, backend.prompts, verdicts, strict=True):
        assert (prompt.index(game.policy.text) < prompt.index(game.opponent.text)) == first
        assert verdict.winner == ("policy" if first else "opponent")
    assert [judge.policy_shown_first(g) for g in games[::-1]] == sides[::-1]
    other = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), swap_positions=False, seed=4)
    assert [other.policy_shown_first(g) for g in games] != sides


class NoLetterBackend:
    """A judge engine whose likeliest next tokens never include a verdict letter."""

    concurrent = False

    def choice_logprobs(self, prompts, choices):
        return [[-np.inf] * len(choices) for _ in prompts]


def test_a_one_token_verdict_without_any_letter_among_the_top_tokens_is_invalid(tokenizer):
    judge = LLMJudge(backend=NoLetterBackend(), tokenizer=tokenizer, template=load_template(None), logprob_verdicts=True)
    verdicts = judge.judge_pairs(_games(2))
    assert [v.valid for v in verdicts] == [False, False] and judge.stats.invalid == 2
    assert "no verdict letter" in verdicts[0].detail


def test_point_wise_games_are_not_judged_pairwise(tokenizer):
    game = _games(1)[0]
    lone = Game(game_id=7, prompt=game.prompt, policy=game.policy, opponent=None)
    judge = LLMJudge(backend=ScriptedBackend(["[[A]]"], ["[[B]]"]), tokenizer=tokenizer, template=load_template(None))
    verdicts = judge.judge_pairs([game, lone])
    assert verdicts[0].winner == "policy" and not verdicts[1].valid and verdicts[1].game_id == 7


# ---------------------------------------------------------------- a real vLLM engine as the judge


@pytest.mark.slow
def test_logprob_verdicts_on_a_vllm_engine_equal_the_models_own_probabilities(tmp_path, tokenizer):
    """The engine's verdict is the argmax over log p(A / B / C | prompt + "[[") that transformers
    computes on the same tokens; the text mode on a random model gives replies that are counted."""
    pytest.importorskip("vllm")
    import torch
    import transformers

    from megatron_elo.config.schema import ArchConfig, EngineConfig
    from megatron_elo.judges.llm import LOGPROB_CHOICES, EngineJudgeBackend
    from megatron_elo.models.tiny import lift_output_tokens, make_tiny_hf_model, make_tiny_tokenizer
    from megatron_elo.rollout.engine import RolloutEngine

    arch = ArchConfig(family="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                      num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=2048, tie_word_embeddings=False)
    model_dir = make_tiny_hf_model(arch, tmp_path / "judge", seed=3, init_std=0.5)
    make_tiny_tokenizer(model_dir)
    lift_output_tokens(model_dir)  # a random model rarely has a verdict letter among its 20 likeliest next tokens
    engine = RolloutEngine(str(model_dir), EngineConfig(max_model_len=2048, kv_cache_gib=0.25, gpu_memory_utilization=0.2),
                           seed=0, dtype="fp32")
    games = _games(3)
    judge = LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer, template=load_template(None),
                     swap_positions=False, logprob_verdicts=True)
    verdicts = judge.judge_pairs(games)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    for game, verdict in zip(games, verdicts, strict=True):
        ids = tokenizer.encode(judge._prompt(game, policy_first=judge.policy_shown_first(game)), add_special_tokens=False)
        with torch.no_grad():
            next_logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        letters = list(LOGPROB_CHOICES)
        best = letters[int(torch.stack([next_logp[tokenizer.encode(c)[0]] for c in letters]).argmax())]
        as_seen = {"A": "policy", "B": "opponent", "C": "tie"} if judge.policy_shown_first(game) else \
            {"A": "opponent", "B": "policy", "C": "tie"}
        assert verdict.valid and verdict.winner == as_seen[best]
        engine_logp = [float(x.split("=")[1]) for x in verdict.detail.removeprefix("logp ").split()]
        expected = [next_logp[tokenizer.encode(c)[0]].item() for c in letters]
        twentieth = next_logp.topk(20).values[-1].item()
        for got, want in zip(engine_logp, expected, strict=True):  # outside the top 20: -inf, and truly below them
            assert abs(got - want) < 1e-3 if got != -np.inf else want < twentieth + 1e-4
        assert max(engine_logp) > -np.inf

    # a prompt over the in-process engine's max_model_len fails alone (it used to fail the whole call)
    tried = engine.try_generate([[5] * 2100, [5, 6, 7]], SamplingSettings(n=1, max_tokens=2, temperature=0.0))
    assert "over the engine's max_model_len=2048" in tried[0] and len(tried[1][0].token_ids) == 2

    text_judge = LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer, template=load_template(None),
                          swap_positions=True, max_new_tokens=8)
    verdicts = text_judge.judge_pairs(games)
    invalid = sum(not v.valid for v in verdicts)
    assert text_judge.stats.invalid == invalid and text_judge.stats.games == 3


# ---------------------------------------------------------------- served engines


@pytest.fixture()
def fake_server():
    servers = []

    def start(**kwargs):
        port = free_port()
        server = make_server(port, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    for server in servers:
        server.shutdown()


def test_served_engine_generates_and_scores_token_ids(fake_server, tokenizer):
    server = fake_server(fail_first=2, tokenizer=tokenizer)  # two 503s, then answers
    engine = ServedRolloutEngine(CompletionsClient(server.url, model="m", retries=2, backoff_s=0.01))
    reply = tuple(tokenizer.encode("[[B]]", add_special_tokens=False))
    groups = engine.generate([[1, 2], [3]], SamplingSettings(n=2, max_tokens=4, temperature=1.0, seed=10))
    assert [[s.token_ids for s in g] for g in groups] == [[reply, reply], [reply, reply]]
    assert groups[0][0].logprobs == (-0.5,) * len(reply) and groups[0][0].finish_reason == "stop"
    from megatron_elo.rollout.engine import default_seeds

    seeds = default_seeds(SamplingSettings(n=2, seed=10), 2)  # as the in-process engine: disjoint 2-sample streams
    assert groups[1] == engine.generate([[3]], SamplingSettings(n=2, max_tokens=4, temperature=1.0), seeds=[seeds[1]])[0]
    # one request per prompt, each with its own seed
    assert {(tuple(b["prompt"][0]), b["seed"]) for b in server.requests if b.get("seed") is not None} == {
        ((1, 2), seeds[0]), ((3,), seeds[1])}
    greedy = engine.generate([[1]], SamplingSettings(n=3, max_tokens=4, temperature=0.0))  # vLLM refuses n > 1 greedy
    assert len(greedy[0]) == 3 and greedy[0][0] == greedy[0][2]
    assert engine.score([[5, 6, 7]]) == [[None, pytest.approx(-0.06), pytest.approx(-0.07)]]


def test_llm_judge_through_a_served_engine(fake_server, tokenizer):
    engine = ServedRolloutEngine(CompletionsClient(fake_server(tokenizer=tokenizer).url, model="judge", backoff_s=0.01))
    backend = EngineJudgeBackend(engine, tokenizer)
    games = [Game(game_id=g.game_id, prompt=g.prompt, opponent=g.opponent,
                  policy=Response(player="policy", prompt_id=g.prompt.prompt_id, sample_index=0, text="policy-first"))
             for g in _games(2)]
    # this server's judge answers [[A]] whenever it sees the policy's answer anywhere: a position bias
    one_order = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), swap_positions=False)
    sides = [one_order.policy_shown_first(g) for g in games]  # A when shown first, else B: its verdict is always A
    assert [v.winner for v in one_order.judge_pairs(games)] == ["policy" if first else "opponent" for first in sides]
    swapped = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), swap_positions=True)
    assert [v.winner for v in swapped.judge_pairs(games)] == ["tie", "tie"] and swapped.stats.order_flips == 2
    logprob_judge = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), logprob_verdicts=True)
    verdicts = logprob_judge.judge_pairs(_games(2))  # the server's log-prob is -0.01 * token id: "A" wins both orders
    letters = {c: -0.01 * tokenizer.encode(c, add_special_tokens=False)[0] for c in "ABC"}
    assert [v.winner for v in verdicts] == ["tie", "tie"]
    one_order_detail = "logp " + " ".join(f"{c}={v:.3f}" for c, v in letters.items())
    assert verdicts[0].detail == f"{one_order_detail} | {one_order_detail}"  # both orders


def test_a_refused_judge_request_drops_its_game_alone(fake_server, tokenizer):
    """One game's prompt is over the served judge's max_model_len (HTTP 400): that game is dropped and
    counted as failed; the batch's other games are judged (they used to be dropped with it)."""
    server = fake_server(tokenizer=tokenizer, max_prompt_len=600)
    engine = ServedRolloutEngine(CompletionsClient(server.url, model="judge", retries=0, backoff_s=0.01))
    judge = LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer, template=load_template(None))
    games = _games(3)
    games[1] = Game(game_id=1, prompt=games[1].prompt, opponent=games[1].opponent,
                    policy=Response(player="policy", prompt_id="p1", sample_index=0, text="policy-answer-1 " + "x" * 800))
    verdicts = judge.judge_pairs(games)
    assert [v.valid for v in verdicts] == [True, False, True]
    assert "judge request failed" in verdicts[1].detail and "HTTP 400" in verdicts[1].detail
    assert judge.stats.failed == 1 and judge.stats.invalid == 0 and judge.stats.games == 3


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_judge_prompts_that_would_not_fit_are_cut_or_dropped_and_counted(tokenizer, overlong):
    """judge.overlong: a prompt over max_prompt_tokens gets both answers cut to max_answer_tokens, marked
    (truncate), or its game dropped (drop); the other games are judged as they are; counted either way."""
    from megatron_elo.judges.llm import TRUNCATION_MARK

    games = _games(3)
    games[2] = Game(game_id=2, prompt=games[2].prompt, opponent=games[2].opponent,
                    policy=Response(player="policy", prompt_id="p2", sample_index=0, text="policy-answer-2 " + "y" * 2000))
    backend = ContentBackend()
    seen = []
    backend.complete = lambda prompts, max_new_tokens, inner=backend.complete: seen.extend(prompts) or inner(
        prompts, max_new_tokens=max_new_tokens)
    judge = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), max_prompt_tokens=1200,
                     overlong=overlong, max_answer_tokens=64)
    verdicts = judge.judge_pairs(games)
    assert judge.stats.overlong == 1 and judge.metrics()["judge/overlong_rate"] == pytest.approx(1 / 3)
    assert all(len(tokenizer.encode(p, add_special_tokens=False)) <= 1200 for p in seen)
    if overlong == "truncate":
        assert verdicts[2].valid and verdicts[2].winner == "tie" and len(seen) == 6  # game 2: kind 2, flips: a tie
        assert sum(TRUNCATION_MARK in p for p in seen) == 2 and "y" * 100 not in " ".join(seen)
    else:
        assert not verdicts[2].valid and "judge.overlong=drop" in verdicts[2].detail and len(seen) == 4
    assert [v.winner for v in verdicts[:2]] == ["policy", "opponent"]


def test_client_gives_up_after_retries_and_on_bad_requests(fake_server):
    slow = CompletionsClient(fake_server(delay=1.0).url, model="m", timeout_s=0.2, retries=1, backoff_s=0.01)
    with pytest.raises(ServerError, match="no answer after 2 attempts"):
        slow.post({"prompt": [[1]], "max_tokens": 1})
    bad = CompletionsClient(fake_server().url, model="m", retries=5, backoff_s=10.0)
    with pytest.raises(ServerError, match="HTTP 400"):  # not retried: the 10 s backoff would time the test out
        bad.post({"no_prompt": True})


def test_served_engine_starts_on_health_and_reports_crashes(tmp_path):
    script = str(Path(__file__).parent / "fake_openai_server.py")
    port = free_port()
    server = ServedEngine([sys.executable, script, str(port)], port=port, startup_timeout_s=30, log_path=tmp_path / "log")
    server.start()
    try:
        assert server.healthy()
        assert CompletionsClient(server.base_url, model="m").post({"prompt": [[1]]})["choices"][0]["token_ids"] == [7, 8, 9]
    finally:
        server.stop()
    assert server.process.poll() is not None and not server.healthy()
    crashing = ServedEngine([sys.executable, "-c", "raise SystemExit(3)"], port=free_port(), startup_timeout_s=30)
    with pytest.raises(ServerError, match="exited with code 3"):
        crashing.start()
    silent = ServedEngine([sys.executable, "-c", "import time; time.sleep(60)"], port=free_port(), startup_timeout_s=1.5)
    with pytest.raises(ServerError, match="did not answer"):
        silent.start()
    assert silent.process.poll() is not None  # stopped, not left behind


class ContentBackend:
    """A served-like backend (calls may overlap): the verdict follows the text, so any batching gives
    the same replies. ``barrier`` makes two batches wait for each other (they must be in flight at once)."""

    concurrent = True

    def __init__(self, barrier: threading.Barrier | None = None):
        self.barrier = barrier

    def complete(self, prompts, *, max_new_tokens):
        if self.barrier is not None:
            self.barrier.wait(timeout=20)
        replies = []
        for prompt in prompts:
            policy_first = prompt.index("policy-answer") < prompt.index("opp-answer")
            kind = int(prompt.split("question ")[1].split()[0]) % 4  # policy wins, opponent wins, flips, invalid
            first_wins = {0: policy_first, 1: not policy_first, 2: True}.get(kind)
            replies.append(JudgeReply("no idea" if first_wins is None else "[[A]]" if first_wins else "[[B]]"))
        return replies


def test_streamed_batches_are_judged_at_once_and_match_one_batch(tokenizer):
    """judge_stream on a concurrent backend sends each opponent's batch as it comes, two in flight at
    once (a barrier both must reach), and gives the verdicts and statistics of one batch; the judge's
    statistics survive a state_dict round trip (the runner checkpoints them)."""
    games = _games(9)
    one_batch = LLMJudge(backend=ContentBackend(), tokenizer=tokenizer, template=load_template(None))
    expected = one_batch.judge(games)
    streamed = LLMJudge(backend=ContentBackend(threading.Barrier(2)), tokenizer=tokenizer, template=load_template(None))
    got = streamed.judge_stream(iter([games[5:], games[:5]]))
    assert got == expected and [v.game_id for v in got] == list(range(9))
    assert {v.winner for v in got} == {"policy", "opponent", "tie", None} and streamed.stats == one_batch.stats
    restored = LLMJudge(backend=ContentBackend(), tokenizer=tokenizer, template=load_template(None))
    restored.load_state_dict(streamed.state_dict())
    assert restored.stats == streamed.stats and restored.metrics() == streamed.metrics()


def make_tiny_reward_model(directory: Path) -> Path:
    """A random 1-layer Qwen2 sequence classifier (one output) with the byte tokenizer, saved locally."""
    import torch
    import transformers

    from megatron_elo.models.tiny import make_tiny_tokenizer

    make_tiny_tokenizer(directory)
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    config = transformers.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                                      pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.Qwen2ForSequenceClassification(config).save_pretrained(str(directory))
    return directory


def test_a_reward_model_scores_single_answers_as_transformers_does_one_by_one(tmp_path):
    """RewardModelJudge's batched, right-padded scores equal the model's output on each conversation
    alone (no padding), rendered with the RM's chat template; a pairwise game is invalid."""
    import torch
    import transformers

    from megatron_elo.judges.reward_model import RewardModelJudge

    model_dir = make_tiny_reward_model(tmp_path / "rm")
    judge = RewardModelJudge(str(model_dir), batch_size=3, system_prompt="Add.")
    games = [Game(game_id=g.game_id, prompt=g.prompt, policy=Response(player="policy", prompt_id=g.prompt.prompt_id,
                                                                          sample_index=0, text="answer " * (g.game_id + 1)),
                  opponent=None) for g in _games(5)]
    pair = _games(6)[5]
    verdicts = judge.judge([*games, pair])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    for game, verdict in zip(games, verdicts, strict=False):
        text = tok.apply_chat_template([{"role": "system", "content": "Add."}, {"role": "user", "content": game.prompt.text},
                                        {"role": "assistant", "content": game.policy.text}], tokenize=False)
        with torch.no_grad():
            alone = model(torch.tensor([tok.encode(text, add_special_tokens=False)])).logits[0, 0].item()
        assert verdict.valid and verdict.score == pytest.approx(alone, abs=1e-5)
    assert len({v.score for v in verdicts[:5]}) == 5  # answers of different lengths: the padding is not read
    assert not verdicts[5].valid and "single answers" in verdicts[5].detail
