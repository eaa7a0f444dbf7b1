"""``megatron-elo bench harness``: the harness's batching against asking one prompt per call.

    megatron-elo bench harness                                  # tiny candidate and judge made here (CPU)
    megatron-elo bench harness --candidate /ckpt/policy --judge /models/Qwen3-14B --questions 256 --device cuda

One in-process engine at a time: the candidate answers ``--questions`` AlpacaEval-style questions
(``--answer-tokens`` each, greedy), then the judge judges each answer against a reference in both
orders (``--verdict-tokens``). ``batched`` is what ``megatron-elo eval`` does (every prompt of a turn,
every judge prompt of a chunk, in one engine call); ``per prompt`` is the peer: a loop with one
request per call, as a script over an API would. Engine start-up is not timed; the stores are off.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench harness``'s options."""
    parser.add_argument("--candidate", default=None, help="candidate HF checkpoint; default: a tiny one made here")
    parser.add_argument("--judge", default=None, help="judge HF checkpoint; default: a tiny one made here")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--verdict-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", help="also write the table (markdown) to this file")


def _tiny(directory: Path, seed: int) -> str:
    from megatron_elo.config.schema import ArchConfig
    from megatron_elo.models.tiny import make_tiny_hf_model, make_tiny_tokenizer

    arch = ArchConfig(family="qwen2", num_layers=1, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                      num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=4096, tie_word_embeddings=True)
    make_tiny_hf_model(arch, directory, seed=seed, init_std=0.3)
    make_tiny_tokenizer(directory)
    return str(directory)


def _timed(call, items: list, batched: bool) -> tuple[list, float]:
    began = time.perf_counter()
    out = call(items) if batched else [x for item in items for x in call([item])]
    return out, time.perf_counter() - began


def run(args: argparse.Namespace) -> None:
    """Print the table (see the module docstring)."""
    import transformers

    from megatron_elo.config.schema import DataConfig, EngineConfig, ModelConfig
    from megatron_elo.data.tokenizer import player_tokenizer
    from megatron_elo.flow import Prompt
    from megatron_elo.harness.answers import answer_settings
    from megatron_elo.harness.judging import TEMPLATES, load_template
    from megatron_elo.harness.pairwise import PAIR_FIELDS
    from megatron_elo.judges.llm import EngineJudgeBackend
    from megatron_elo.rollout.engine import RolloutEngine
    from megatron_elo.utils.logging import send_engine_logs_to
    from megatron_elo.utils.report import device_label, emit_table

    scratch = tempfile.TemporaryDirectory()
    send_engine_logs_to(Path(scratch.name) / "engine.log")
    candidate = args.candidate or _tiny(Path(scratch.name) / "candidate", seed=1)
    judge_dir = args.judge or _tiny(Path(scratch.name) / "judge", seed=2)
    engine_config = EngineConfig(max_model_len=args.max_model_len, gpu_memory_utilization=0.2 if args.device == "cpu" else 0.4,
                                 kv_cache_gib=0.5 if args.device == "cpu" else None)
    tokenizer = player_tokenizer(DataConfig(), ModelConfig(path=candidate))
    prompts = [Prompt(prompt_id=f"q{i}", text=f"Write one sentence about the number {i}.") for i in range(args.questions)]
    ids = [tokenizer.encode_prompt(p) for p in prompts]
    settings = answer_settings(temperature=0.0, max_new_tokens=args.answer_tokens, eos_id=tokenizer.eos_id)
    rows = []
    engine = RolloutEngine(candidate, engine_config, seed=0, dtype=args.dtype)
    engine.generate(ids[:2], settings)  # warm-up
    for batched in (True, False):
        answers, seconds = _timed(lambda batch: [tokenizer.decode(g[0].token_ids) for g in engine.generate(batch, settings)],
                                  ids, batched)
        rows.append(("answers", "batched" if batched else "per prompt (peer)", len(ids), seconds))
    engine.close()
    judge_tokenizer = transformers.AutoTokenizer.from_pretrained(judge_dir)
    template = load_template(TEMPLATES / "pairwise_vs_reference" / "pairwise.txt", PAIR_FIELDS)
    judge_prompts = [judge_tokenizer.apply_chat_template([{"role": "user", "content": template.format(
        question=p.text, answer_a=a, answer_b=f"The number {i}.")}], tokenize=False, add_generation_prompt=True)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True))]
    judge_prompts += judge_prompts  # both orders' worth of prompts
    backend = EngineJudgeBackend(RolloutEngine(judge_dir, engine_config, seed=0, dtype=args.dtype), judge_tokenizer)
    backend.complete(judge_prompts[:2], max_new_tokens=args.verdict_tokens)  # warm-up
    for batched in (True, False):
        _, seconds = _timed(lambda batch: backend.complete(batch, max_new_tokens=args.verdict_tokens), judge_prompts, batched)
        rows.append(("judge prompts", "batched" if batched else "per prompt (peer)", len(judge_prompts), seconds))
    backend.close()
    header = (f"bench harness on {device_label(args.device, 'vLLM CPU backend')}; candidate {Path(candidate).name}, "
              f"judge {Path(judge_dir).name}, {args.questions} questions, {args.answer_tokens}-token answers, "
              f"{args.verdict_tokens}-token verdicts, {args.dtype}\n\n")
    table = "| stage | how | prompts | seconds | prompts/s |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {stage} | {how} | {count} | {seconds:.2f} | {count / seconds:.1f} |" for stage, how, count, seconds in rows)
    emit_table(header + table, args.out)
    scratch.cleanup()
