"""SPARTA's tribe: several trained players on the same ranks, each with its trainer, its colocated engine
and its pair update, taking turns.

    tribe = Tribe.build(cfg, world)                          # collective: every player's trainer and engine
    answers = tribe.answer(batch, plan, step)                # {(prompt index, player): Response}, every rank
    replies = tribe.generate("m2", prompts, token_ids, settings)   # a panel judge's replies (every rank)
    stats = tribe.train(rows, step=step)                     # {player: [StepStats]}: each trains, then syncs

Time-sharing: a player's engine is woken for its generation and its weight sync and put back to sleep
after (vLLM sleep mode on GPU frees its weights and KV cache; a no-op on CPU), so only one engine holds
device memory at a time. With ``algorithm.sparta.offload_idle`` the trainers take turns too: each
player's trainer (and its frozen reference) lives in host memory (``trainer/offload.py``) except during
its own update and weight sync (and a checkpoint's read or write of it); otherwise all trainers stay
resident and must fit together. Every player is ``cfg`` with its own weights (``players[i].path``) and
learning rate; they share the tokenizer (checked: a pair trains every player on both duellists' token ids).
All players share the run's layout (``parallel.*``): the tribe takes turns on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from megatron_elo.config.schema import RunConfig
from megatron_elo.config.validate_sparta import player_model
from megatron_elo.data.pairs import PairRows
from megatron_elo.flow import Prompt, PromptBatch, Response
from megatron_elo.loss.preference import PairLossConfig
from megatron_elo.matchmaking.duels import DuelPlan
from megatron_elo.parallel.world import World
from megatron_elo.players.pair_update import PairUpdate
from megatron_elo.players.trained import TrainedPlayer
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.trainer.offload import offload, resident
from megatron_elo.trainer.step import PolicyTrainer, StepStats
from megatron_elo.utils.seeds import stable_seed

TOKENIZER_PROBE = Prompt(prompt_id="probe", text="12+7=")


def player_config(cfg: RunConfig, index: int) -> RunConfig:
    """The run's config as player ``index`` sees it: its weights (``model.path``) and its learning rate."""
    player = cfg.players[index]
    trainer = replace(cfg.trainer, lr=player.lr) if player.lr is not None else cfg.trainer
    return replace(cfg, model=player_model(cfg, index), trainer=trainer)


def check_shared_tokenizer(players: Sequence[TrainedPlayer]) -> None:
    """Raise naming the first player whose tokenizer differs from the first's (ids of a probe, EOS, pad)."""
    first = players[0].tokenizer
    expected = (first.encode_prompt(TOKENIZER_PROBE), first.eos_id, first.pad_id)
    for player in players[1:]:
        mine = (player.tokenizer.encode_prompt(TOKENIZER_PROBE), player.tokenizer.eos_id, player.tokenizer.pad_id)
        if mine != expected:
            raise ValueError(f"players: {player.name}'s tokenizer differs from {players[0].name}'s; a SPARTA tribe "
                             f"trains every player on every duellist's token ids: give them one tokenizer "
                             f"(model.tokenizer)")


class Tribe:
    """Every trained player of a SPARTA run, by name, in ``players`` order (see the module docstring)."""

    def __init__(self, cfg: RunConfig, players: dict[str, TrainedPlayer], updates: dict[str, PairUpdate]):
        self.cfg, self.players, self.updates = cfg, players, updates

    @classmethod
    def build(cls, cfg: RunConfig, world: World) -> Tribe:
        """Each player's trainer (the pair loss of ``algorithm.pairs``; its frozen initial copy when the loss
        reads it) and engine, asleep until used, the trainer offloaded with ``offload_idle`` (collective)."""
        loss = PairLossConfig.from_pairs(cfg.algorithm.pairs)
        players, updates = {}, {}
        for i, spec in enumerate(cfg.players):
            mine = player_config(cfg, i)
            player = TrainedPlayer.build(mine, world, name=spec.name, loss=loss.loss, loss_config=loss,
                                         with_reference=loss.needs_initial_reference())
            player.sleep()
            if cfg.algorithm.sparta.offload_idle:  # before the next player is built: one trainer on the device at a time
                for trainer in _trainers_of(player):
                    offload(trainer)
            players[spec.name] = player
            updates[spec.name] = PairUpdate(trainer=player.trainer, reference=player.reference, cfg=mine,
                                            pad_id=player.tokenizer.pad_id)
        check_shared_tokenizer(list(players.values()))
        return cls(cfg, players, updates)

    @property
    def names(self) -> list[str]:
        """The players' names, in ``players`` order."""
        return list(self.players)

    def trainers(self) -> dict[str, PolicyTrainer]:
        """Every player's trainer by name (the first's shards are a checkpoint's main shards)."""
        return {name: player.trainer for name, player in self.players.items()}

    def generate(self, name: str, prompts: Sequence[Prompt], token_ids: Sequence[Sequence[int]],
                 settings: SamplingSettings) -> list[Response]:
        """One answer of player ``name`` per prompt, its engine woken for it (collective)."""
        if not prompts:
            return []
        player = self.players[name]
        player.wake_up()
        try:
            groups = player.sampler.respond(prompts, token_ids, settings, player=name)
        finally:
            player.sleep()
        return [group[0] for group in groups]

    def answer(self, batch: PromptBatch, plan: DuelPlan, step: int) -> dict[tuple[int, str], Response]:
        """Both duellists' answers of every duel: {(prompt index, player): Response}; each player answers all
        its instructions in one call, at the rollout settings, seeded by (run seed, player, step)."""
        r = self.cfg.rollout
        answers = {}
        for name, player in self.players.items():
            mine = plan.answering(name)
            settings = SamplingSettings(n=1, max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                        top_k=r.top_k, seed=stable_seed(self.cfg.seed, name, "duel", step),
                                        stop_token_ids=(player.tokenizer.eos_id,))
            responses = self.generate(name, [batch.prompts[i] for i in mine], [batch.token_ids[i] for i in mine], settings)
            answers.update({(i, name): response for i, response in zip(mine, responses, strict=True)})
        return answers

    def train(self, rows: PairRows, *, step: int) -> dict[str, list[StepStats]]:
        """Every player's pair update on all of ``rows`` (``algorithm.pairs.epochs`` passes), then its weights to
        its engine (collective); {player: its optimizer steps' statistics}."""
        stats = {}
        for name in self.players:
            with self.resident(name):
                stats[name] = self.updates[name].train(rows, step=step, epochs=self.cfg.algorithm.pairs.epochs)
                self.sync(name)
        return stats

    @contextmanager
    def resident(self, name: str) -> Iterator[None]:
        """Player ``name``'s trainer and reference on the device inside the block (offloaded again after when
        ``offload_idle``; a no-op otherwise)."""
        with ExitStack() as stack:
            for trainer in _trainers_of(self.players[name]):
                stack.enter_context(resident(trainer))
            yield

    def sync(self, name: str) -> None:
        """Player ``name``'s trainer weights into its engine (collective)."""
        player = self.players[name]
        with self.resident(name):
            player.wake_up()
            try:
                player.sync_weights()
            finally:
                player.sleep()

    def sync_all(self) -> None:
        """Every player's engine gets its trainer's weights (after a resume; collective)."""
        for name in self.players:
            self.sync(name)


def _trainers_of(player: TrainedPlayer) -> list[PolicyTrainer]:
    """A player's trainer and, when it has one, its frozen reference."""
    return [player.trainer, *([player.reference] if player.reference is not None else [])]
