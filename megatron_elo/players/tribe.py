"""SPARTA's tribe: several trained players, each with its trainer, its colocated engine and its pair update,
taking turns on the same ranks or side by side on slices of the world.

    tribe = Tribe.build(cfg, world)                          # collective: every player's trainer and engine
    answers = tribe.answer(batch, plan, step)                # {(prompt index, player): Response}, every rank
    replies = tribe.generate_each({"m2": Request(prompts, token_ids, settings)})   # the panel judges' replies
    stats = tribe.train(rows, step=step)                     # {player: [StepStats]}: each trains, then syncs

Time-sharing: a player's engine is woken for its generation and its weight sync and put back to sleep
after (vLLM sleep mode on GPU frees its weights and KV cache; a no-op on CPU), so only one engine holds
device memory at a time. With ``algorithm.sparta.offload_idle`` the trainers take turns too: each
player's trainer (and its frozen reference) lives in host memory (``trainer/offload.py``) except during
its own update and weight sync (and a checkpoint's read or write of it); otherwise all trainers stay
resident and must fit together. Every player is ``cfg`` with its own weights (``players[i].path``) and
learning rate; they share the tokenizer (checked: a pair trains every player on both duellists' token ids).

Placement (``algorithm.sparta.slices``): 1, every player on every rank (the run's layout ``parallel.*``);
S > 1, the world cut into S slices of ``parallel.*`` each (``WorldSlices``), players dealt in order, P / S
to a slice. A rank then holds only its slice's players (``players``; ``names`` lists them all); each
slice answers, judges and trains its own players while the others do theirs, and what one slice
generated or measured reaches every rank through the world's gather (``World.gather``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from megatron_elo.config.schema import RunConfig
from megatron_elo.config.validate_sparta import player_model
from megatron_elo.data.pairs import PairRows
from megatron_elo.data.tokenizer import PromptTokenizer, player_tokenizer
from megatron_elo.flow import Prompt, PromptBatch, Response
from megatron_elo.loss.preference import PairLossConfig
from megatron_elo.matchmaking.duels import DuelPlan
from megatron_elo.parallel.layout import WorldSlices
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


def check_shared_tokenizer(tokenizers: Mapping[str, PromptTokenizer]) -> None:
    """Raise naming the first player whose tokenizer differs from the first's (ids of a probe, EOS, pad)."""
    (first_name, first), *others = tokenizers.items()
    expected = (first.encode_prompt(TOKENIZER_PROBE), first.eos_id, first.pad_id)
    for name, tokenizer in others:
        if (tokenizer.encode_prompt(TOKENIZER_PROBE), tokenizer.eos_id, tokenizer.pad_id) != expected:
            raise ValueError(f"players: {name}'s tokenizer differs from {first_name}'s; a SPARTA tribe "
                             f"trains every player on every duellist's token ids: give them one tokenizer "
                             f"(model.tokenizer)")


@dataclass(frozen=True)
class Request:
    """What one player is asked to generate: one answer per prompt (its token ids) at ``settings``."""

    prompts: Sequence[Prompt]
    token_ids: Sequence[Sequence[int]]
    settings: SamplingSettings


class Tribe:
    """Every trained player of a SPARTA run (see the module docstring): ``players`` this rank's, by name, in
    ``players`` order; ``names`` all of them."""

    def __init__(self, cfg: RunConfig, players: dict[str, TrainedPlayer], updates: dict[str, PairUpdate], *,
                 names: Sequence[str], tokenizers: Mapping[str, PromptTokenizer], world: World, home: World):
        self.cfg, self.players, self.updates = cfg, players, updates
        self.names, self.tokenizers = list(names), dict(tokenizers)
        self.world, self.home = world, home  # the whole world; this rank's slice of it (the world when unsliced)

    @classmethod
    def build(cls, cfg: RunConfig, world: World) -> Tribe:
        """Each of this slice's players' trainer (the pair loss of ``algorithm.pairs``; its frozen initial copy when
        the loss reads it) and engine, asleep until used, the trainer offloaded with ``offload_idle``
        (collective: the slices build their k-th players together)."""
        loss = PairLossConfig.from_pairs(cfg.algorithm.pairs)
        slices = WorldSlices.from_config(cfg)
        if slices.world_size != world.size:
            raise ValueError(f"algorithm.sparta.slices={slices.count} of parallel tp*pp*dp={slices.shape.world_size} "
                             f"ranks need a world of {slices.world_size}, this one has {world.size}")
        mine = slices.index_of(world.rank)
        home = world.split([list(layout.ranks) for layout in slices.layouts()]) if slices.count > 1 else world
        players, updates = {}, {}
        for i in [i for i, where in enumerate(slices.dealt(len(cfg.players))) if where == mine]:
            spec, own = cfg.players[i], player_config(cfg, i)
            player = TrainedPlayer.build(own, home, name=spec.name, loss=loss.loss, loss_config=loss,
                                         with_reference=loss.needs_initial_reference(), slices=slices)
            player.sleep()
            if cfg.algorithm.sparta.offload_idle:  # before the next player is built: one trainer on the device at a time
                for trainer in _trainers_of(player):
                    offload(trainer)
            players[spec.name] = player
            updates[spec.name] = PairUpdate(trainer=player.trainer, reference=player.reference, cfg=own,
                                            pad_id=player.tokenizer.pad_id)
        tokenizers = {p.name: players[p.name].tokenizer if p.name in players else
                      player_tokenizer(cfg.data, player_model(cfg, i)) for i, p in enumerate(cfg.players)}
        check_shared_tokenizer(tokenizers)
        return cls(cfg, players, updates, names=[p.name for p in cfg.players], tokenizers=tokenizers, world=world, home=home)

    @property
    def sliced(self) -> bool:
        """The players are side by side on slices of the world (``algorithm.sparta.slices`` > 1)."""
        return self.home is not self.world

    def trainers(self) -> dict[str, PolicyTrainer | None]:
        """Every player's trainer by name, None for a player on another slice (the first's shards are a
        checkpoint's main shards)."""
        return {name: self.players[name].trainer if name in self.players else None for name in self.names}

    def gather(self, mine: Mapping) -> dict:
        """Every slice's ``mine`` (one dict per slice, from its first rank) merged, on every rank (collective;
        ``mine`` itself when the tribe is not sliced)."""
        if not self.sliced:
            return dict(mine)
        merged = {}
        for part in self.world.gather(dict(mine) if self.home.is_driver else None, waiting_for="the other slices"):
            merged.update(part or {})
        return merged

    def generate_each(self, requests: Mapping[str, Request]) -> dict[str, list[Response]]:
        """One answer per prompt of each player's request, on every rank: each slice's players on their own
        engines, in turn, each engine woken for it (collective)."""
        return self.gather({name: self._generate(name, request) for name, request in requests.items()
                            if name in self.players})

    def _generate(self, name: str, request: Request) -> list[Response]:
        if not request.prompts:
            return []
        player = self.players[name]
        player.wake_up()
        try:
            groups = player.sampler.respond(request.prompts, request.token_ids, request.settings, player=name)
        finally:
            player.sleep()
        return [group[0] for group in groups]

    def answer(self, batch: PromptBatch, plan: DuelPlan, step: int) -> dict[tuple[int, str], Response]:
        """Both duellists' answers of every duel: {(prompt index, player): Response}; each player answers all
        its instructions in one call, at the rollout settings, seeded by (run seed, player, step)."""
        r = self.cfg.rollout
        requests = {}
        for name in self.names:
            mine = plan.answering(name)
            settings = SamplingSettings(n=1, max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                        top_k=r.top_k, seed=stable_seed(self.cfg.seed, name, "duel", step),
                                        stop_token_ids=(self.tokenizers[name].eos_id,))
            requests[name] = Request([batch.prompts[i] for i in mine], [batch.token_ids[i] for i in mine], settings)
        responses = self.generate_each(requests)
        return {(i, name): response for name in self.names
                for i, response in zip(plan.answering(name), responses[name], strict=True)}

    def train(self, rows: PairRows, *, step: int) -> dict[str, list[StepStats]]:
        """Every player's pair update on all of ``rows`` (``algorithm.pairs.epochs`` passes), then its weights to
        its engine (collective); {player: its optimizer steps' statistics}, every player's on every rank."""
        stats = {}
        for name in self.players:
            with self.resident(name):
                stats[name] = self.updates[name].train(rows, step=step, epochs=self.cfg.algorithm.pairs.epochs)
                self.sync(name)
        if self.sliced:  # the log-probs stay behind: they are this rank's rows
            stats = {name: [replace(s, logprobs=None) for s in mine] for name, mine in stats.items()}
        merged = self.gather(stats)
        return {name: merged[name] for name in self.names}

    @contextmanager
    def resident(self, name: str) -> Iterator[None]:
        """Player ``name``'s trainer and reference on the device inside the block (offloaded again after when
        ``offload_idle``; a no-op otherwise)."""
        with ExitStack() as stack:
            for trainer in _trainers_of(self.players[name]):
                stack.enter_context(resident(trainer))
            yield

    def sync(self, name: str) -> None:
        """Player ``name``'s trainer weights into its engine (collective over its slice)."""
        player = self.players[name]
        with self.resident(name):
            player.wake_up()
            try:
                player.sync_weights()
            finally:
                player.sleep()

    def sync_all(self) -> None:
        """Every engine of this slice gets its player's trainer weights (after a resume; collective)."""
        for name in self.players:
            self.sync(name)


def _trainers_of(player: TrainedPlayer) -> list[PolicyTrainer]:
    """A player's trainer and, when it has one, its frozen reference."""
    return [player.trainer, *([player.reference] if player.reference is not None else [])]
