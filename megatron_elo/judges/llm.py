"""Pairwise LLM-as-judge: a template, robust verdict parsing, log-prob verdicts, position swap.

    judge = LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer,
                     template=load_template(None), swap_positions=True, logprob_verdicts=False)
    verdicts = judge.judge_pairs(games, rng)          # one Verdict per Game; judge.stats counts the rest

Text verdicts (``verdicts.py``): the judge writes reasoning and then [[A]], [[B]] or [[C]] (tie);
"Verdict: A", "Winner: Answer B", a bare letter are accepted too; anything else, two different
verdicts, a reply cut at ``max_new_tokens`` without a bracketed verdict or a think block that never
closes is invalid: the game is dropped and counted, never silently a win. Log-prob verdicts: the
assistant turn is prefilled with "[[" and the verdict is the most likely of the letters A / B / C.
Position swap: each game is judged with the policy's answer first and again second; a verdict that
changes with the order becomes a tie; an invalid verdict in either order drops the game. Without the
swap, the policy's answer goes to side A or B by a seeded coin per game (a function of the game, not
of the batch it is judged in).

Failures drop only what failed: a request the engine refuses (a prompt over its max_model_len, a
4xx) drops that game; a prompt that would not fit ``max_prompt_tokens`` is, by ``overlong``, shortened
by cutting both answers to ``max_answer_tokens`` (marked in the prompt) or dropped; either is counted
(``judge/failed_rate``, ``judge/overlong_rate``). Anything else the backend raises drops the batch.
On a served engine ``judge_stream`` judges each batch (one opponent's games) as soon as it arrives,
several at once; the verdicts are those of one big batch (greedy decoding, no randomness).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from megatron_elo.flow import Game, Verdict
from megatron_elo.judges.base import judge_in_one_batch
from megatron_elo.judges.verdicts import (  # noqa: F401  (re-exported: the judge's reading of replies)
    LOGPROB_CHOICES,
    LOGPROB_PREFILL,
    JudgeReply,
    Letter,
    load_template,
    parse_verdict,
    read_reply,
)
from megatron_elo.rollout.served import EngineDown
from megatron_elo.utils.seeds import stable_seed


class JudgeBackend(Protocol):
    """What an LLM judge needs from an engine. Prompts are fully rendered text (chat template applied)."""

    concurrent: bool  # calls may overlap (a served engine)

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[JudgeReply]:
        """Greedy completion of each prompt (a refused request: a reply with ``error`` set)."""
        ...

    def choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[float]]:
        """log p(choice | prompt) (nats, summed over the choice's tokens) for every prompt and choice."""
        ...


@dataclass
class JudgeStats:
    """Counts over the judge's lifetime (``LLMJudge.stats``), for metrics."""

    games: int = 0
    invalid: int = 0  # unparsable, ambiguous, cut or still-thinking verdict in some order
    failed: int = 0  # the backend refused or raised: game dropped
    overlong: int = 0  # the prompt did not fit: answers cut (overlong=truncate) or the game dropped
    order_flips: int = 0  # swap on: the verdict changed with the order (became a tie)
    examples: list[str] = field(default_factory=list)  # a few invalid replies, for the log

    def as_metrics(self) -> dict[str, float]:
        """Rates for MLflow (per game judged)."""
        games = max(self.games, 1)
        return {"judge/invalid_rate": self.invalid / games, "judge/failed_rate": self.failed / games,
                "judge/overlong_rate": self.overlong / games, "judge/order_flip_rate": self.order_flips / games}


@dataclass(frozen=True)
class _Read:
    """One judgement of a game: the letter (None: no verdict), the text to record, whether it failed."""

    letter: Letter | None
    text: str
    failed: bool = False


TRUNCATION_MARK = " [... answer truncated]"


class LLMJudge:
    """Decides pairwise games with an LLM (the ``Judge`` protocol; see the module docstring).

    max_prompt_tokens: the longest prompt (judge tokens) the engine takes with room for the reply
    (max_model_len - max_new_tokens; None: unchecked); overlong: "truncate" or "drop" beyond it."""

    scores_single_answers = False

    def __init__(self, *, backend: JudgeBackend, tokenizer, template: str, swap_positions: bool = True,
                 logprob_verdicts: bool = False, max_new_tokens: int = 256, template_kwargs: dict | None = None,
                 seed: int = 0, max_prompt_tokens: int | None = None, overlong: str = "truncate",
                 max_answer_tokens: int = 1024):
        self.backend, self.tokenizer, self.template = backend, tokenizer, template
        self.swap_positions, self.logprob_verdicts, self.max_new_tokens = swap_positions, logprob_verdicts, max_new_tokens
        self.template_kwargs = dict(template_kwargs or {})  # judge.model.chat_template_kwargs
        self.seed = seed  # the sides of games judged in one order only
        self.max_prompt_tokens, self.overlong, self.max_answer_tokens = max_prompt_tokens, overlong, max_answer_tokens
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()  # batches of one stream are combined from several threads

    def judge(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """One verdict per game; a game without an opponent is invalid (this judge compares two answers)."""
        return self.judge_pairs(games, rng)

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator | None = None) -> list[Verdict]:
        """Each batch sent as soon as it arrives (a served backend: several in flight), else all in one."""
        if not getattr(self.backend, "concurrent", False):
            return judge_in_one_batch(self, batches, rng)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="judge") as pool:
            futures = [pool.submit(self.judge_pairs, list(batch)) for batch in batches]
            verdicts = [v for future in futures for v in future.result()]
        return sorted(verdicts, key=lambda v: v.game_id)

    def metrics(self) -> dict[str, float]:
        """Invalid, failed, overlong and order-flip rates over every game judged so far (and the
        restarts of its served engine, ``engine/restarts/judge``)."""
        restarts = getattr(getattr(self.backend, "engine", None), "restarts", None)
        return self.stats.as_metrics() | ({"engine/restarts/judge": float(restarts)} if restarts is not None else {})

    def close(self) -> None:
        """Stop the judge's engine (its server, when it started one)."""
        self.backend.close()

    def state_dict(self) -> dict:
        """Its statistics (so a resumed run's rates continue, not restart)."""
        return asdict(self.stats)

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s statistics."""
        self.stats = JudgeStats(**state)

    # ------------------------------------------------------------ prompts

    def render(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's prompt text: the filled template as a user turn, then the assistant prefix."""
        user = self.template.format(question=question, answer_a=answer_a, answer_b=answer_b)
        return self.render_user(user) + (LOGPROB_PREFILL if self.logprob_verdicts else "")

    def render_user(self, user: str) -> str:
        """``user`` as a user turn in the judge's chat template, then the assistant prefix."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True, **self.template_kwargs)

    def policy_shown_first(self, game: Game) -> bool:
        """Whether the policy's answer is A in the game's first (or, without the swap, only) judgement:
        always with the swap; else a coin seeded by (judge seed, prompt, sample, opponent)."""
        if self.swap_positions:
            return True
        return stable_seed(self.seed, game.prompt.prompt_id, game.policy.sample_index, game.opponent_name) % 2 == 0

    def _prompt(self, game: Game, *, policy_first: bool, cut: bool = False) -> str:
        answers = [game.policy.text, game.opponent.text] if policy_first else [game.opponent.text, game.policy.text]
        if cut:
            answers = [self.cut(text) for text in answers]
        return self.render(game.prompt.text, *answers)

    def cut(self, text: str) -> str:
        """``text`` cut to max_answer_tokens judge tokens (marked), or whole when it is shorter."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= self.max_answer_tokens else self.tokenizer.decode(ids[: self.max_answer_tokens]) + TRUNCATION_MARK

    def fits(self, prompt: str) -> bool:
        """Whether the rendered ``prompt`` fits the judge's max_prompt_tokens."""
        return self.max_prompt_tokens is None or len(self.tokenizer.encode(prompt, add_special_tokens=False)) <= self.max_prompt_tokens

    def _game_prompts(self, game: Game) -> tuple[list[str] | None, bool]:
        """(the game's 1 or 2 prompts, or None when it is dropped; whether it did not fit as it was)."""
        orders = [self.policy_shown_first(game)] + ([False] if self.swap_positions else [])
        prompts = [self._prompt(game, policy_first=first) for first in orders]
        if all(self.fits(p) for p in prompts):
            return prompts, False
        if self.overlong == "truncate":
            prompts = [self._prompt(game, policy_first=first, cut=True) for first in orders]
            if all(self.fits(p) for p in prompts):
                return prompts, True
        return None, True

    # ------------------------------------------------------------ verdicts

    def _reads(self, prompts: list[str]) -> list[_Read]:
        """One judgement per prompt."""
        if self.logprob_verdicts:
            out = []
            for row in self.backend.choice_logprobs(prompts, list(LOGPROB_CHOICES)):
                text = "logp " + " ".join(f"{c}={v:.3f}" for c, v in zip(LOGPROB_CHOICES, row, strict=True))
                if max(row) == -math.inf:  # no verdict letter among the likeliest next tokens: no verdict
                    out.append(_Read(None, text + " (no verdict letter among the judge's likeliest next tokens)"))
                    continue
                out.append(_Read(LOGPROB_CHOICES[list(LOGPROB_CHOICES)[int(np.argmax(row))]], text))
            return out
        reads = []
        for reply in self.backend.complete(prompts, max_new_tokens=self.max_new_tokens):
            if reply.error is not None:
                reads.append(_Read(None, f"judge request failed: {reply.error}", failed=True))
            else:
                reads.append(_Read(*read_reply(reply)))
        return reads

    def judge_pairs(self, games: Sequence[Game], rng: np.random.Generator | None = None) -> list[Verdict]:
        """One verdict per pairwise game (policy vs opponent); ``rng`` is unused (greedy judge)."""
        planned = {g.game_id: self._game_prompts(g) for g in games if g.opponent is not None}
        judged = [g for g in games if g.opponent is not None and planned[g.game_id][0] is not None]
        judged_ids = {g.game_id for g in judged}
        orders = 2 if self.swap_positions else 1  # every game's first judgement, then every game's second
        prompts = [planned[g.game_id][0][order] for order in range(orders) for g in judged]
        try:
            reads = self._reads(prompts) if prompts else []
        except Exception as err:  # a judge failure never crashes a run: drop these games, say why
            if isinstance(err, EngineDown):  # ... unless its engine is gone for good: the run checkpoints and stops
                raise
            reason = f"judge failed: {type(err).__name__}: {err}"[:300]
            with self._stats_lock:
                self.stats.games += len(games)
                self.stats.failed += len(judged)
                self.stats.overlong += sum(over for _, over in planned.values())
            return [Verdict(game_id=g.game_id, valid=False, detail=reason if g.game_id in judged_ids else self._not_judged(g))
                    for g in games]
        decided = {}
        with self._stats_lock:
            self.stats.games += len(games)
            self.stats.overlong += sum(over for _, over in planned.values())
            for index, game in enumerate(judged):
                decided[game.game_id] = self._combine(game, reads[index::len(judged)])
        return [decided.get(g.game_id) or Verdict(game_id=g.game_id, valid=False, detail=self._not_judged(g))
                for g in games]

    def _not_judged(self, game: Game) -> str:
        if game.opponent is None:
            return "not a pairwise game"
        return f"judge prompt over judge.engine.max_model_len - judge.max_new_tokens = {self.max_prompt_tokens} tokens " \
               f"(judge.overlong={self.overlong})"

    def _combine(self, game: Game, reads: list[_Read]) -> Verdict:
        """Policy shown first in ``reads[0]`` (or second, without the swap, by its coin), second in ``reads[1]``."""
        as_a = {"A": "policy", "B": "opponent", "tie": "tie"}
        as_b = {"A": "opponent", "B": "policy", "tie": "tie"}
        failed = next((r for r in reads if r.failed), None)
        if failed is not None:
            self.stats.failed += 1
            return Verdict(game_id=game.game_id, valid=False, detail=failed.text[:300])
        bad = next((r for r in reads if r.letter is None), None)
        if bad is not None:
            self.stats.invalid += 1
            if len(self.stats.examples) < 5:
                self.stats.examples.append(bad.text[:200])
            return Verdict(game_id=game.game_id, valid=False, detail=f"invalid judge reply: {bad.text[:300]!r}")
        winner = (as_a if self.policy_shown_first(game) else as_b)[reads[0].letter]
        if len(reads) > 1 and as_b[reads[1].letter] != winner:
            self.stats.order_flips += 1
            winner = "tie"
        return Verdict(game_id=game.game_id, winner=winner, detail=" | ".join(r.text[-200:] for r in reads))


class EngineJudgeBackend:
    """The judge on a vLLM engine driven with token ids (``RolloutEngine`` in this process or a
    ``ServedRolloutEngine``), prompts encoded with the judge's tokenizer."""

    def __init__(self, engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer
        self.concurrent = getattr(engine, "served", False)

    def close(self) -> None:
        """Stop the judge's engine (its server, when it runs as one)."""
        self.engine.close()

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)  # the chat template already has them

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[JudgeReply]:
        """Greedy completions, decoded without special tokens (truncated: stopped by the token limit); a
        request the engine refuses is a reply with its error, the others are unaffected."""
        from megatron_elo.rollout.engine import SamplingSettings

        settings = SamplingSettings(n=1, max_tokens=max_new_tokens, temperature=0.0,
                                    stop_token_ids=(self.tokenizer.eos_token_id,))
        replies = []
        for result in self.engine.try_generate([self._encode(p) for p in prompts], settings):
            if isinstance(result, str):
                replies.append(JudgeReply("", error=result))
            else:
                replies.append(JudgeReply(self.tokenizer.decode(list(result[0].token_ids), skip_special_tokens=True),
                                          truncated=result[0].finish_reason == "length"))
        return replies

    def choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str], *, fallback: bool = True) -> list[list[float]]:
        """log p(choice's first token | prompt) from one generated token's top log-probs (one decoding
        step per prompt); a choice outside the top ``TOP_LOGPROBS`` is -inf, below every one in it, so
        the likeliest choice is still the likeliest. A prompt with no choice among them (rare for a
        real judge) is scored exactly instead (``scored_choice_logprobs``; ``fallback=False``: left at
        -inf). Choices must differ in their first token."""
        from megatron_elo.rollout.engine import TOP_LOGPROBS

        first = [self._encode(c)[0] for c in choices]
        if len(set(first)) < len(first):
            raise ValueError(f"judge choices {list(choices)} share a first token in this tokenizer: one-token verdicts "
                             f"cannot tell them apart")
        top = self.engine.next_token_logprobs([self._encode(p) for p in prompts], top=TOP_LOGPROBS)
        rows = [[alternatives.get(token, -math.inf) for token in first] for alternatives in top]
        missing = [i for i, row in enumerate(rows) if max(row) == -math.inf] if fallback else []
        for i, row in zip(missing, self.scored_choice_logprobs([prompts[i] for i in missing], choices) if missing else [],
                          strict=True):
            rows[i] = row
        return rows

    def scored_choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[float]]:
        """``choice_logprobs`` the long way (``bench judge`` compares): prompt + choice scored as one
        sequence per (prompt, choice), prompt log-probs over all of it; sums the choice tokens'."""
        encoded = [self._encode(p) for p in prompts]
        choice_ids = [self._encode(c) for c in choices]
        sequences = [prompt + ids for prompt in encoded for ids in choice_ids]
        scored = self.engine.score(sequences)
        out, cursor = [], 0
        for prompt in encoded:
            row = []
            for ids in choice_ids:
                row.append(float(sum(scored[cursor][len(prompt):len(prompt) + len(ids)])))
                cursor += 1
            out.append(row)
        return out


def build_llm_judge(config, *, seed: int, cluster=None, world_size: int = 1, log_dir: str | Path | None = None) -> LLMJudge:
    """The judge of ``config`` (a ``JudgeConfig`` with kind=llm) on its own vLLM engine (in this
    process, or a server: ``judge.engine.launch``), its prompts rendered with the judge model's own
    tokenizer and chat template. cluster: where dedicated judge servers are (default: one CPU node)."""
    import transformers

    from megatron_elo.config.schema import ClusterConfig
    from megatron_elo.rollout.launch import open_engine

    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model.path)
    engine = open_engine(config.model, config.engine, cluster=cluster or ClusterConfig(device="cpu"), seed=seed,
                         world_size=world_size, log_path=Path(log_dir) / "judge.log" if log_dir else None, name="judge")
    return LLMJudge(backend=EngineJudgeBackend(engine, tokenizer), tokenizer=tokenizer, template=load_template(config.template),
                    swap_positions=config.swap_positions, logprob_verdicts=config.logprob_verdicts,
                    max_new_tokens=config.max_new_tokens, template_kwargs=config.model.chat_template_kwargs, seed=seed,
                    max_prompt_tokens=config.engine.max_model_len - config.max_new_tokens, overlong=config.overlong,
                    max_answer_tokens=config.max_answer_tokens)
