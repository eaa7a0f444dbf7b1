"""Frozen players: opponents answering from their own engines, through the answer store.

    opponents = FrozenPlayers.from_config(cfg, world_size=world.size)
    for name, answers in opponents.answers_as_completed({"medium": prompts, "strong": more}):
        ...                                   # {prompt_id: Response}, each opponent as soon as it is done
    opponents.close()                         # stops the engines (servers) they started

An answer is generated once per (opponent, what it saw, seed) and stored (``answer_store.py``); an
opponent's engine starts on its first miss (never, when the store has every answer). Opponents on
served engines are asked concurrently (their servers batch the requests); in-process engines one after
another in the caller's thread (they share this process). A snapshot player (a past checkpoint of a
trained player, exported to HF and served) is a FrozenPlayer whose model path is that export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from megatron_elo.config.schema import OpponentConfig, RunConfig
from megatron_elo.data.tokenizer import PromptTokenizer, player_tokenizer
from megatron_elo.flow import Prompt, Response
from megatron_elo.players.answer_store import AnswerStore, answer_key
from megatron_elo.rollout.engine import SamplingSettings
from megatron_elo.utils.logging import get_logger
from megatron_elo.utils.seeds import stable_seed

log = get_logger(__name__)


class FrozenPlayer:
    """One opponent: its tokenizer, its engine (started lazily by ``open_engine``) and the store."""

    def __init__(self, config: OpponentConfig, *, tokenizer: PromptTokenizer, store: AnswerStore, run_seed: int,
                 open_engine: Callable[[], object], served: bool):
        self.config, self.name = config, config.name
        self.tokenizer, self.store, self.run_seed = tokenizer, store, run_seed
        self.served = served  # its engine is a server: safe to call from a thread
        self._open_engine = open_engine
        self.engine = None  # started on the first answer the store lacks

    def settings(self, *, greedy: bool) -> SamplingSettings:
        """How this opponent samples (greedy: temperature 0)."""
        return SamplingSettings(n=1, max_tokens=self.config.max_new_tokens, temperature=0.0 if greedy else self.config.temperature,
                                stop_token_ids=(self.tokenizer.eos_id,))

    def answers(self, prompts: Sequence[Prompt], *, greedy: bool = False, seed: int | None = None) -> dict[str, Response]:
        """{prompt_id: this opponent's answer}, generating only what the store lacks; each answer is
        seeded by (``seed``, default the run's seed; opponent; prompt), whatever else is asked with it."""
        seed = self.run_seed if seed is None else seed
        seeds = [stable_seed(seed, self.name, p.prompt_id) for p in prompts]
        answers = self._generate(prompts, seeds, [0] * len(prompts), greedy=greedy)
        return {p.prompt_id: answer for p, answer in zip(prompts, answers, strict=True)}

    def samples(self, prompts: Sequence[Prompt], k: int, *, seed: int | None = None) -> list[list[Response]]:
        """[P][k] sampled answers of each prompt, in prompt order (a repeated prompt gets the same ones; Temporal
        Self-Rewarding's M_0): answer 0 is ``answers``' answer, answer j > 0 seeded by (seed, opponent, prompt, j);
        stored and reused like every answer."""
        seed = self.run_seed if seed is None else seed
        asked = [(p, j) for p in prompts for j in range(k)]
        seeds = [stable_seed(seed, self.name, p.prompt_id, *([j] if j else [])) for p, j in asked]
        answers = self._generate([p for p, _ in asked], seeds, [j for _, j in asked], greedy=False)
        return [answers[i * k:(i + 1) * k] for i in range(len(prompts))]

    def _generate(self, prompts: Sequence[Prompt], request_seeds: list[int], sample_indices: list[int], *,
                  greedy: bool) -> list[Response]:
        """One answer per (prompt, seed), from the store or (what it lacks) the engine, started on first need."""
        settings = self.settings(greedy=greedy)
        token_ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        keys = [answer_key(self.config.model.path, ids, settings, s) for ids, s in zip(token_ids, request_seeds, strict=True)]
        texts = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in texts]
        if missing:
            if self.engine is None:
                log.info("starting opponent %s's engine", self.name)
                self.engine = self._open_engine()
            samples = self.engine.generate([token_ids[i] for i in missing], settings, [request_seeds[i] for i in missing])
            rows = [(keys[i], prompts[i].prompt_id, self.tokenizer.decode(group[0].token_ids))
                    for i, group in zip(missing, samples, strict=True)]
            self.store.put_many(rows, opponent=self.name)
            texts.update((key, text) for key, _, text in rows)
        return [Response(player=self.name, prompt_id=p.prompt_id, sample_index=j, text=texts[key])
                for p, key, j in zip(prompts, keys, sample_indices, strict=True)]

    def close(self) -> None:
        """Stop its engine (its server, when it started one)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class FrozenPlayers:
    """The run's opponents, by name."""

    def __init__(self, players: Mapping[str, FrozenPlayer]):
        self.players = dict(players)

    @classmethod
    def from_config(cls, cfg: RunConfig, *, world_size: int) -> FrozenPlayers:
        """Every configured opponent, with its own tokenizer, sharing one answer store under output_dir."""
        from megatron_elo.rollout.launch import launches_server, open_engine

        store = AnswerStore(Path(cfg.output_dir) / "opponent_cache" / "answers.sqlite")
        log_dir = Path(cfg.output_dir) / "engine_logs"

        def opener(o: OpponentConfig):
            return lambda: open_engine(o.model, o.engine, cluster=cfg.cluster, seed=cfg.seed, world_size=world_size,
                                       log_path=log_dir / f"{o.name}.log", name=f"opponents.{o.name}")

        return cls({o.name: FrozenPlayer(o, tokenizer=player_tokenizer(cfg.data, o.model), store=store, run_seed=cfg.seed,
                                         open_engine=opener(o), served=launches_server(o.engine, world_size=world_size))
                    for o in cfg.opponents})

    @property
    def names(self) -> list[str]:
        """Opponent names in config order."""
        return list(self.players)

    def answers(self, name: str, prompts: Sequence[Prompt], *, greedy: bool = False, seed: int | None = None) -> dict[str, Response]:
        """One opponent's answers (see ``FrozenPlayer.answers``)."""
        return self.players[name].answers(prompts, greedy=greedy, seed=seed)

    def answers_as_completed(self, requests: Mapping[str, Sequence[Prompt]], *, greedy: bool = False,
                             seed: int | None = None) -> Iterator[tuple[str, dict[str, Response]]]:
        """(name, {prompt_id: answer}) for every requested opponent: the served ones are asked all at
        once in threads, the in-process ones meanwhile one after another in this thread (name order),
        then the served ones are yielded as each finishes."""
        served = sorted(n for n in requests if self.players[n].served)
        local = sorted(n for n in requests if not self.players[n].served)
        with ThreadPoolExecutor(max_workers=max(len(served), 1), thread_name_prefix="opponent") as pool:
            futures = {pool.submit(self.answers, n, requests[n], greedy=greedy, seed=seed): n for n in served}
            for name in local:
                yield name, self.answers(name, requests[name], greedy=greedy, seed=seed)
            for future in as_completed(futures):
                yield futures[future], future.result()

    def metrics(self) -> dict[str, float]:
        """``engine/restarts/<name>``: how often each served opponent's server was started again after dying."""
        return {f"engine/restarts/{name}": float(getattr(player.engine, "restarts", 0))
                for name, player in self.players.items() if player.served}

    def close(self) -> None:
        """Stop every engine started."""
        for player in self.players.values():
            player.close()
