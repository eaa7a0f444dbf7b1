"""Matches + answers -> games: one game per scored-player sample, ids in prompt-major order.

    games = make_games(plan, prompts, rollouts, answers)                       # every match
    mine = make_games(plan, prompts, rollouts, answers, opponent="medium")     # only medium's, same ids

Game ids are fixed by the plan (sample j of the i-th match's player is game i * n + j when every match
has n samples), so games made per opponent as its answers arrive get the ids they would get together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from megatron_elo.flow import Game, MatchPlan, Prompt, Response

_ALL = object()


def make_games(plan: MatchPlan, prompts: Sequence[Prompt], rollouts: Sequence[Sequence[Response]],
               answers: Mapping[tuple[str, str], Response], *, opponent: object = _ALL) -> list[Game]:
    """One game per player sample of every match (or of the matches against ``opponent``; None: the
    single-answer ones): ``rollouts[i]`` are prompt i's samples, the opponent's answer is
    ``answers[(prompt_id, opponent)]``. Raises naming a missing answer or a misgrouped sample."""
    if not len(prompts) == len(rollouts) == len(plan.matches):
        raise ValueError(f"prompts ({len(prompts)}), sample groups ({len(rollouts)}) and matches "
                         f"({len(plan.matches)}) must have the same length")
    games, first_id = [], 0
    for match in plan.matches:
        prompt, samples = prompts[match.prompt_index], rollouts[match.prompt_index]
        ids = range(first_id, first_id + len(samples))
        first_id += len(samples)
        if opponent is not _ALL and match.opponent != opponent:
            continue
        answer = None
        if match.opponent is not None:
            key = (prompt.prompt_id, match.opponent)
            if key not in answers:
                raise KeyError(f"no answer from opponent {match.opponent!r} to prompt {prompt.prompt_id!r}")
            answer = answers[key]
        for game_id, sample in zip(ids, samples, strict=True):
            if sample.prompt_id != prompt.prompt_id:
                raise ValueError(f"sample for prompt {sample.prompt_id!r} is grouped under {prompt.prompt_id!r}")
            games.append(Game(game_id=game_id, prompt=prompt, policy=sample, opponent=answer))
    return games


def opponent_requests(plan: MatchPlan, prompts: Sequence[Prompt]) -> dict[str, list[Prompt]]:
    """{opponent: the prompts it must answer} (each prompt once, in prompt order), single-answer matches left out."""
    requests: dict[str, list[Prompt]] = {}
    for match in plan.matches:
        if match.opponent is not None:
            requests.setdefault(match.opponent, []).append(prompts[match.prompt_index])
    return requests
