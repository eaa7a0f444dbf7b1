"""The typed records on each arrow of a step (frozen dataclasses, never dicts of strings).

    PromptBatch -> rollouts -> MatchPlan -> opponent answers -> Game -> Verdict -> Outcome -> GroupSignal -> train -> sync
    (prompts +    Response    (Match per    Response           (two     (winner   (reward per  (advantages    StepStats
     token ids)               prompt)                           answers, or score) player      [P, n])
                                                                or one)            sample)

A step's ``StepRecord`` holds everything it produced; logging and artifacts read only that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from megatron_elo.trainer.step import StepStats

POLICY = "policy"

Winner = Literal["policy", "opponent", "tie"]

SCORE_OF_WINNER: dict[str, float] = {"policy": 1.0, "opponent": 0.0, "tie": 0.5}  # the scored player's Elo score S


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    """One turn of a chat prompt."""

    role: Role
    content: str


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One prompt of the data set: a user turn (``text``), or a whole conversation (``messages``)."""

    prompt_id: str  # stable across runs (row id or content hash)
    text: str  # the user turn, before any chat template; with messages: the last user turn's content (what a judge is shown)
    reference: str | None = None  # checkable answer for verifiable tasks (programmatic judges)
    messages: tuple[ChatMessage, ...] = ()  # a conversation ending in a user turn; empty: ``text`` is the only turn


@dataclass(frozen=True, kw_only=True)
class PromptBatch:
    """One step's prompts and the trained player's rendered token ids of each (same on every rank)."""

    prompts: tuple[Prompt, ...]
    token_ids: tuple[tuple[int, ...], ...]  # [P][prompt length]: chat template applied, the policy's tokenizer

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True, kw_only=True)
class Response:
    """One sampled answer to a prompt, by a trained player or by an opponent."""

    player: str  # POLICY (a trained player's name) or an opponent's name
    prompt_id: str
    sample_index: int  # position in the prompt's group of n samples (0 for opponents)
    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()  # per-token sampling log-probs, nats (trained players' samples)
    finish_reason: str = "stop"  # "stop" or "length"


@dataclass(frozen=True, kw_only=True)
class Match:
    """Who plays whom on one prompt: ``player``'s ``player_samples`` answers each against one answer
    of ``opponent`` (None: each answer is scored alone). Room for self-play (opponent a trained player,
    its own samples) and round robins (several matches per prompt)."""

    prompt_index: int  # position in the step's PromptBatch
    player: str = POLICY
    opponent: str | None = None
    player_samples: int = 1
    opponent_samples: int = 1


@dataclass(frozen=True, kw_only=True)
class MatchPlan:
    """One step's matches (one per prompt today) and how they were drawn."""

    matches: tuple[Match, ...]
    probabilities: dict[str, float] = field(default_factory=dict)  # opponent selection distribution (logged); {} if not sampled
    temperature: float | None = None  # selection temperature, when sampled

    @property
    def opponents(self) -> list[str | None]:
        """The opponent of each match, in match order (None: scored alone)."""
        return [m.opponent for m in self.matches]


@dataclass(frozen=True, kw_only=True)
class Game:
    """The scored player's answer (``policy``) against an opponent's answer to the same prompt
    (pairwise), or alone (single-answer scoring: ``opponent`` is None)."""

    game_id: int
    prompt: Prompt
    policy: Response
    opponent: Response | None

    @property
    def opponent_name(self) -> str | None:
        """The opponent's name, or None in a single-answer game."""
        return self.opponent.player if self.opponent is not None else None


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The judge's decision on one game. ``valid`` False: unparsable or failed; the game is dropped."""

    game_id: int
    winner: Winner | None = None  # pairwise games
    score: float | None = None  # single-answer games: absolute score
    valid: bool = True
    detail: str = ""  # raw judge output or the reason it is invalid


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The reward of one player sample, ready for group normalisation."""

    game_id: int
    prompt_id: str
    sample_index: int
    opponent: str | None
    reward: float  # pairwise: 1 win, 0 loss, tie_reward for a tie; single-answer: the judge's score
    valid: bool  # False: the game was dropped (its sample gets no gradient)
    winner: Winner | None = None  # pairwise games: who won (for Elo), None when scored alone or dropped
    player: str = POLICY


@dataclass(frozen=True, kw_only=True)
class GroupSignal:
    """GRPO's training signal for one step: rewards per prompt group and their normalised advantages."""

    rewards: np.ndarray  # [P, n] float64
    valid: np.ndarray  # [P, n] bool: the sample's game was decided
    advantages: torch.Tensor  # [P * n] float32, prompt-major (sample j of prompt i at i * n + j)


@dataclass(frozen=True, kw_only=True)
class PreferencePair:
    """Two samples of one prompt, the judged better one first (pair-loss recipes)."""

    prompt_index: int  # position in the step's PromptBatch
    chosen: int  # sample indices in the prompt's group of n
    rejected: int
    chosen_win: float = 1.0  # each one's win rate in the step's games (SPPO's soft targets)
    rejected_win: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PairSignal:
    """A pair recipe's training signal for one step (same on every rank)."""

    pairs: tuple[PreferencePair, ...]
    prompts_without_pair: int  # prompts whose games decided no pair (all tied, dropped or equal)
    decided_games: int
    undecided_games: int  # tied or invalid verdicts: no pair from them

    def metrics(self) -> dict[str, float]:
        """Pair counts as metrics."""
        return {"pairs/count": float(len(self.pairs)), "pairs/prompts_without_pair": float(self.prompts_without_pair),
                "pairs/decided_games": float(self.decided_games), "pairs/undecided_games": float(self.undecided_games)}


@dataclass(frozen=True, kw_only=True)
class Played:
    """The driver's games of one step, from matches to outcomes."""

    plan: MatchPlan
    games: tuple[Game, ...]
    verdicts: tuple[Verdict, ...]
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """Everything one step produced (the driver's; other ranks hold ``train`` only)."""

    step: int  # steps done after this one (1-based)
    train: tuple[StepStats, ...]  # one per optimizer step (none in an overlapped run's first step)
    response_tokens: float  # response tokens trained on
    timings: dict[str, float]  # seconds per phase
    played: Played | None = None  # the games judged this step (driver)
    signal: GroupSignal | None = None
    pairs: PairSignal | None = None  # pair recipes: the step's preference pairs
    ratings: dict[str, float] = field(default_factory=dict)  # Elo ratings after this step, policy first
    extra_metrics: dict[str, float] = field(default_factory=dict)  # stage statistics, e.g. the LLM judge's rates
