"""The models a benchmark evaluates, and their answers (one or two turns), cached like opponents' answers.

    candidates = resolve_candidates(cfg, checkpoints=["runs/x/checkpoints/step_000100"], models={"base": "/ckpt/qwen"})
    with ModelAnswers(cfg, candidate.model, store=store) as model:          # the candidate's own engine and template
        answer = model.answerer(temperature=0.0, max_new_tokens=512, seed=0)
        turns = answer_turns(answer, questions, max_turns=2)                # {question_id: (turn 1, turn 2)}

An answerer is any ``Callable[[list[Prompt]], list[str]]``: a candidate's engine here, or the policy's
colocated engine during training (``harness.periodic``). Turn 2's prompt is the conversation of turn 1
with the model's own first answer. Answers are stored under (model and its checkpoint files, rendered
prompt ids, sampling settings, seed), so a rerun or a killed evaluation does not generate them again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from megatron_elo.config.schema import ModelConfig, RunConfig
from megatron_elo.data.tokenizer import player_tokenizer
from megatron_elo.flow import ChatMessage, Prompt
from megatron_elo.harness.questions import BenchQuestion
from megatron_elo.players.answer_store import AnswerStore, answer_key
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.utils.seeds import stable_seed

Answerer = Callable[[list[Prompt]], list[str]]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One evaluated model: its table name, its HF model (path, chat template kwargs, dtype), its step."""

    name: str
    model: ModelConfig
    step: int | None = None  # a training checkpoint's step


def resolve_candidates(cfg: RunConfig, *, checkpoints: Sequence[str] = (), models: dict[str, str] | None = None) -> list[Candidate]:
    """--checkpoint directories (exported to HF once; without any: the run's newest checkpoint, or
    cfg.model when the run has none), then the --models NAME=PATH HF directories."""
    from megatron_elo.runner.runner import exported_checkpoint
    from megatron_elo.trainer.checkpoint import latest_valid_checkpoint

    candidates = []
    if not checkpoints:
        newest, _ = latest_valid_checkpoint(Path(cfg.output_dir) / cfg.run_name / "checkpoints")
        checkpoints = [str(newest)] if newest is not None else []
        if newest is None:
            candidates.append(Candidate(name="policy", model=cfg.model, step=0))
    for directory in checkpoints:
        path = Path(directory)
        hf_dir = exported_checkpoint(path)
        step = int(json.loads((path / "meta.json").read_text())["step"])
        tokenizer = cfg.model.tokenizer or cfg.model.path  # the export holds weights; the policy's tokenizer stays
        candidates.append(Candidate(name=path.name, model=replace(cfg.model, path=hf_dir, arch=None, tokenizer=tokenizer),
                                    step=step))
    for name, path in (models or {}).items():
        if not Path(path, "config.json").is_file():
            raise ValueError(f"--models {name}={path}: no config.json there; point it at a local HF model directory")
        candidates.append(Candidate(name=name, model=ModelConfig(path=str(path), dtype=cfg.model.dtype)))
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names repeat: {names}; name --models differently")
    return candidates


def answer_settings(*, temperature: float, max_new_tokens: int, eos_id: int) -> SamplingSettings:
    """One answer per prompt at ``temperature`` (0: greedy), stopping at the model's EOS."""
    return SamplingSettings(n=1, max_tokens=max_new_tokens, temperature=temperature, stop_token_ids=(eos_id,))


class ModelAnswers:
    """A model's answers from its own engine (opened on the first answer the store lacks), cached;
    ``answerer(...)`` gives its ``Answerer`` at some sampling settings (one engine for all of them)."""

    def __init__(self, cfg: RunConfig, model: ModelConfig, *, store: AnswerStore, open_engine: Callable[[], object] | None = None):
        from megatron_elo.rollout.engine import RolloutEngine

        self.model, self.store = model, store
        self.tokenizer = player_tokenizer(cfg.data, model)
        engine_config = replace(cfg.rollout.engine, dp=1)
        self._open = open_engine or (lambda: RolloutEngine(model.path, engine_config, seed=cfg.seed, dtype=model.dtype))
        self.engine = None
        self.generated, self.seconds = 0, 0.0  # answers generated (not from the store) and the time in generate

    def answerer(self, *, temperature: float, max_new_tokens: int, seed: int) -> Answerer:
        """Its answers at ``temperature`` (0: greedy), up to ``max_new_tokens``, seeded per prompt id."""
        settings = answer_settings(temperature=temperature, max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_id)
        return lambda prompts: self.answers(prompts, settings, seed)

    def answers(self, prompts: list[Prompt], settings: SamplingSettings, seed: int) -> list[str]:
        """One answer per prompt (the store's, or generated in one batch)."""
        ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        seeds = [stable_seed(seed, "bench", p.prompt_id) for p in prompts]
        keys = [answer_key(self.model.path, i, settings, s) for i, s in zip(ids, seeds, strict=True)]
        texts = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in texts]
        if missing:
            if self.engine is None:
                self.engine = self._open()
            began = time.perf_counter()
            samples = self.engine.generate([ids[i] for i in missing], settings, [seeds[i] for i in missing])
            self.seconds += time.perf_counter() - began
            rows = [(keys[i], prompts[i].prompt_id, self.tokenizer.decode(group[0].token_ids))
                    for i, group in zip(missing, samples, strict=True)]
            self.store.put_many(rows, opponent=self.model.path or "")
            texts.update((key, text) for key, _, text in rows)
            self.generated += len(missing)
        return [texts[key] for key in keys]

    def close(self) -> None:
        """Stop its engine."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> ModelAnswers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def turn_prompt(question: BenchQuestion, turn: int, previous: Sequence[str] = ()) -> Prompt:
    """The prompt of ``turn`` (0-based): the question's first ``turn`` user turns with the model's own
    ``previous`` answers between them, then this turn's user text."""
    messages = []
    for user, answer in zip(question.turns[:turn], previous, strict=True):
        messages += [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=answer)]
    messages.append(ChatMessage(role="user", content=question.turns[turn]))
    return Prompt(prompt_id=f"{question.question_id}/turn{turn + 1}", text=question.turns[turn],
                  messages=tuple(messages) if turn > 0 else ())


def answer_turns(answer: Answerer, questions: Sequence[BenchQuestion], *, max_turns: int = 1) -> dict[str, tuple[str, ...]]:
    """{question_id: the model's answers to its first min(turns, max_turns) turns}; each turn of every
    question in one batch, turn 2 after turn 1 (it sees the first answer)."""
    done: dict[str, tuple[str, ...]] = {q.question_id: () for q in questions}
    for turn in range(max_turns):
        asked = [q for q in questions if len(q.turns) > turn]
        if not asked:
            break
        texts = answer([turn_prompt(q, turn, done[q.question_id]) for q in asked])
        for question, text in zip(asked, texts, strict=True):
            done[question.question_id] += (text,)
    return done
