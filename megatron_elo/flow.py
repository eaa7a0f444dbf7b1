"""The typed objects on each arrow of a step.

    prompts -> rollouts -> games -> judge verdicts -> outcomes -> advantages -> train step -> weight sync
    Prompt     Response    Game     Verdict           Outcome     (torch tensors, see megatron_elo.loss)

Every stage takes and returns these (frozen dataclasses), never dicts of strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

POLICY = "policy"

Winner = Literal["policy", "opponent", "tie"]

SCORE_OF_WINNER: dict[str, float] = {"policy": 1.0, "opponent": 0.0, "tie": 0.5}  # the policy's Elo score S


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    """One turn of a chat prompt."""

    role: Role
    content: str


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One prompt of the data set: a user turn (``text``), or a whole conversation (``messages``)."""

    prompt_id: str  # stable across runs (row id or content hash): keys the opponent-answer cache
    text: str  # the user turn, before any chat template; with messages: the last user turn's content (what a judge is shown)
    reference: str | None = None  # checkable answer for verifiable tasks (programmatic judges)
    messages: tuple[ChatMessage, ...] = ()  # a conversation ending in a user turn; empty: ``text`` is the only turn


@dataclass(frozen=True, kw_only=True)
class Response:
    """One sampled answer to a prompt, by the policy or by an opponent."""

    player: str  # POLICY or an opponent's name
    prompt_id: str
    sample_index: int  # position in the prompt's group of n policy samples (0 for opponents)
    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()  # per-token sampling log-probs, nats (policy samples)
    finish_reason: str = "stop"  # "stop" or "length"


@dataclass(frozen=True, kw_only=True)
class Game:
    """The policy's answer against an opponent's answer to the same prompt (pairwise), or the
    policy's answer alone (point-wise: ``opponent`` is None)."""

    game_id: int
    prompt: Prompt
    policy: Response
    opponent: Response | None

    @property
    def opponent_name(self) -> str | None:
        """The opponent's name, or None in a point-wise game."""
        return self.opponent.player if self.opponent is not None else None


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The judge's decision on one game. ``valid`` False: unparsable or failed; the game is dropped."""

    game_id: int
    winner: Winner | None = None  # pairwise games
    score: float | None = None  # point-wise games: absolute score
    valid: bool = True
    detail: str = ""  # raw judge output or the reason it is invalid


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The reward of one policy sample, ready for group normalisation."""

    game_id: int
    prompt_id: str
    sample_index: int
    opponent: str | None
    reward: float  # pairwise: 1 win, 0 loss, tie_reward for a tie; point-wise: the judge's score
    valid: bool  # False: the game was dropped (its sample gets no gradient)
    winner: Winner | None = None  # pairwise games: who won (for Elo), None when point-wise or dropped
