"""``megatron-elo bench judge``: log-prob verdicts read from one generated token's top log-probs
against scoring the three choices with full prompt log-prob passes, on one in-process vLLM engine.

    megatron-elo bench judge                                # a tiny judge made locally (CPU)
    megatron-elo bench judge --model /ckpt/Qwen3-14B --games 64 --answer-chars 2000 --device cuda

Each game is rendered with the default template in both orders (the judge's prompts, ``[[``
prefilled). ``scored``: prompt + choice as one sequence per (prompt, choice), its prompt log-probs
computed (three passes over every prompt, as the judge did before); ``one token``: one decoding step
per prompt, the choices' log-probs read from its top ``TOP_LOGPROBS`` (timed without the judge's
fallback for prompts with no choice among them, which it scores the long way). Median of ``--repeats``
after a warm-up, the verdicts of both ways compared (a choice outside the top ones is -inf in the
one-token read, which never changes which choice is likeliest while one of them is inside).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench judge``'s options."""
    parser.add_argument("--model", default=None, help="judge checkpoint (HF, with its tokenizer); default: a tiny one made here")
    parser.add_argument("--games", type=int, default=32, help="games judged (two prompts each: both orders)")
    parser.add_argument("--answer-chars", type=int, default=300, help="characters of each answer")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each way")
    parser.add_argument("--out", help="also write the table (markdown) to this file")


def _tiny_judge(directory: Path) -> Path:
    from megatron_elo.config.schema import ArchConfig
    from megatron_elo.models.tiny import lift_output_tokens, make_tiny_hf_model, make_tiny_tokenizer

    arch = ArchConfig(family="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                      num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=4096, tie_word_embeddings=True)
    make_tiny_hf_model(arch, directory, seed=5, init_std=0.3)
    make_tiny_tokenizer(directory)
    lift_output_tokens(directory)  # its "[[" is then often followed by a verdict letter, as a real judge's
    return directory


def _prompts(judge, games: int, answer_chars: int, seed: int) -> list[str]:
    from megatron_elo.flow import Game, Prompt, Response

    rng = np.random.default_rng(seed)
    words = ["the", "sum", "is", "answer", "because", "first", "then", "so", "we", "add", "carry", "digit"]
    prompts = []
    for i in range(games):
        prompt = Prompt(prompt_id=f"q{i}", text=f"What is {i} + {2 * i}? Explain.")
        texts = [" ".join(rng.choice(words, size=answer_chars // 5))[:answer_chars] for _ in range(2)]
        game = Game(game_id=i, prompt=prompt, policy=Response(player="policy", prompt_id=prompt.prompt_id, sample_index=0,
                                                              text=texts[0]),
                    opponent=Response(player="rival", prompt_id=prompt.prompt_id, sample_index=0, text=texts[1]))
        prompts += [judge._prompt(game, policy_first=True), judge._prompt(game, policy_first=False)]
    return prompts


def _timed(fn, prompt_sets: list[list[str]]) -> tuple[float, list]:
    """Median seconds of ``fn`` over the sets after the first (a warm-up); each set is new to the
    engine, so its prefix cache cannot serve one way from the other's or an earlier repeat's work."""
    fn(prompt_sets[0])  # warm-up
    times, results = [], []
    for prompts in prompt_sets[1:]:
        start = time.perf_counter()
        results += fn(prompts)
        times.append(time.perf_counter() - start)
    return statistics.median(times), results


def run(args: argparse.Namespace) -> int:
    """Entry point of ``megatron-elo bench judge``."""
    import torch
    import transformers

    from megatron_elo.config.schema import EngineConfig
    from megatron_elo.judges.llm import LOGPROB_CHOICES, EngineJudgeBackend, LLMJudge, load_template
    from megatron_elo.rollout.engine import TOP_LOGPROBS, RolloutEngine
    from megatron_elo.utils.logging import send_engine_logs_to
    from megatron_elo.utils.report import device_label, emit_table

    if args.games < 1 or args.repeats < 1:
        raise ValueError("bench judge: --games and --repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="bench_judge_"))
    send_engine_logs_to(work / "engine.log")
    model = args.model or str(_tiny_judge(work / "judge"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    engine = RolloutEngine(model, EngineConfig(max_model_len=args.max_model_len, gpu_memory_utilization=0.2, kv_cache_gib=0.5),
                           seed=0, dtype=args.dtype)
    backend = EngineJudgeBackend(engine, tokenizer)
    judge = LLMJudge(backend=backend, tokenizer=tokenizer, template=load_template(None), logprob_verdicts=True)
    choices = list(LOGPROB_CHOICES)
    sets = [_prompts(judge, args.games, args.answer_chars, seed) for seed in range(2 * (args.repeats + 1))]
    scored_s, scored = _timed(lambda p: backend.scored_choice_logprobs(p, choices), sets[: args.repeats + 1])
    one_s, _ = _timed(lambda p: backend.choice_logprobs(p, choices, fallback=False), sets[args.repeats + 1:])
    one = [row for p in sets[1: args.repeats + 1] for row in backend.choice_logprobs(p, choices, fallback=False)]
    prompts = [p for s in sets[1: args.repeats + 1] for p in s]
    readable = [i for i, row in enumerate(one) if max(row) > -np.inf]
    agree = sum(int(np.argmax(one[i])) == int(np.argmax(scored[i])) for i in readable)
    tokens = int(np.mean([len(backend._encode(p)) for p in prompts]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [f"bench judge on {device_label(device, 'one in-process vLLM engine')}: {'tiny judge (made here)' if args.model is None else model}, "
             f"{args.dtype}, {args.games} games x 2 orders, prompts ~{tokens} tokens, median of {args.repeats} after a warm-up",
             "", "| log-prob verdicts | engine work per prompt | ms per game | speed-up |", "|---|---|---|---|",
             f"| scored: prompt + choice, prompt log-probs | {len(choices)} prefills of the whole prompt | "
             f"{1e3 * scored_s / args.games:.1f} | 1.00x |",
             f"| one token: top-{TOP_LOGPROBS} log-probs of one decoding step | 1 prefill + 1 token | "
             f"{1e3 * one_s / args.games:.1f} | {scored_s / one_s:.2f}x |",
             "", f"same verdict both ways: {agree} of {len(readable)} prompts with a letter among the top {TOP_LOGPROBS} "
             f"({len(prompts) - len(readable)} without one: the judge scores those the long way; the one-token row "
             f"leaves that fallback out)"]
    emit_table("\n".join(lines), args.out)
    return 0
