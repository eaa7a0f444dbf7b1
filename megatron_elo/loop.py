"""The Elo-Evolve training loop (``megatron-elo train``).

One step:  prompts -> policy rollouts (n per prompt) -> opponent per prompt -> opponent answers
(engine, cached) -> judge verdicts (position-swapped) -> outcomes -> advantages -> train step ->
weight sync -> Elo update -> logging.  Every ``eval.every_steps`` (and before the first step and
after the last): the held-out win rate against the eval opponents with its 95% interval.

One process, or a torchrun world of trainer TP x PP x DP ranks with the policy's engine colocated
(one shard per rank, engine TP x DP over the same ranks). In a world every rank trains, generates its
engine replica's share of the prompts (gathered to all) and syncs weights; rank 0, the driver, also
draws the prompts, runs the games against opponents (served engines or their answer cache) and the
judge, keeps the Elo pool, logs and writes artifacts, and broadcasts what the others need (prompts,
advantages, eval results). Results do not depend on the layout: sampling seeds are per prompt, the
loss normaliser is global over DP.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from megatron_elo.algorithms.base import Algorithm, no_signal_rates, outcome_matrix
from megatron_elo.algorithms.methods import build_algorithm
from megatron_elo.config.loader import config_to_dict, dump_yaml, flatten
from megatron_elo.config.schema import ModelConfig, RunConfig
from megatron_elo.data.loader import PromptLoader
from megatron_elo.data.tokenizer import PromptTokenizer
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import POLICY, SCORE_OF_WINNER, Game, Outcome, Prompt, Response
from megatron_elo.judges.llm import LLMJudge, build_llm_judge
from megatron_elo.judges.programmatic import ArithmeticJudge
from megatron_elo.loss.reference import group_advantages
from megatron_elo.rollout.engine import RolloutEngine, Sample, SamplingSettings
from megatron_elo.rollout.launch import open_engine
from megatron_elo.tasks.arithmetic import CharTokenizer, make_prompts
from megatron_elo.tracking import Tracker, make_tracker
from megatron_elo.trainer.step import PolicyTrainer, TrainBatch
from megatron_elo.utils.logging import get_logger, progress_bar

if TYPE_CHECKING:
    from megatron_elo.data.dali import DaliPromptLoader

log = get_logger(__name__)


class NotSupportedYet(RuntimeError):
    """A configuration the loop does not run yet; the message says what to use instead."""


# ---------------------------------------------------------------- players


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the parts' text (stable across processes, unlike hash())."""
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


class OpponentAnswers:
    """Frozen opponents' answers, generated once per (opponent, prompt, seed) and cached on disk
    (``<output_dir>/opponent_cache/<name>.jsonl``), reused across steps and runs."""

    def __init__(self, cfg: RunConfig, tokenizers: dict[str, PromptTokenizer], *, world_size: int = 1):
        self.cfg, self.tokenizers = cfg, tokenizers  # each opponent reads prompts through its own tokenizer
        self.world_size = world_size  # > 1: engines run as servers (launch=auto)
        self.dir = Path(cfg.output_dir) / "opponent_cache"
        self.engines: dict = {}  # name -> RolloutEngine or ServedRolloutEngine
        self.cache: dict[str, dict[str, str]] = {}
        self.by_name = {o.name: o for o in cfg.opponents}

    def _key(self, name: str, prompt: Prompt, greedy: bool, seed: int) -> str:
        o = self.by_name[name]
        return json.dumps([prompt.prompt_id, prompt.text, greedy, o.temperature, o.max_new_tokens, seed,
                           str(Path(o.model.path or "").resolve())])

    def _load(self, name: str) -> dict[str, str]:
        if name not in self.cache:
            self.cache[name] = {}
            file = self.dir / f"{name}.jsonl"
            if file.is_file():
                for line in file.read_text().splitlines():
                    row = json.loads(line)
                    self.cache[name][row["key"]] = row["text"]
        return self.cache[name]

    def _engine(self, name: str):
        if name not in self.engines:  # started lazily (never, when the cache has every answer), reused afterwards
            o = self.by_name[name]
            log.info("starting opponent %s's engine", name)
            self.engines[name] = open_engine(o.model, o.engine, cluster=self.cfg.cluster, seed=self.cfg.seed,
                                             world_size=self.world_size,
                                             log_path=Path(self.cfg.output_dir) / "engine_logs" / f"{name}.log")
        return self.engines[name]

    def close(self) -> None:
        """Stop every engine started (servers included)."""
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()

    def answers(self, name: str, prompts: list[Prompt], *, greedy: bool = False, seed: int | None = None) -> dict[str, Response]:
        """{prompt_id: the opponent's answer}, generating only what the cache lacks; sampled answers are
        seeded by (``seed``, default the run's seed; opponent; prompt)."""
        seed = self.cfg.seed if seed is None else seed
        cache = self._load(name)
        missing = [p for p in prompts if self._key(name, p, greedy, seed) not in cache]
        if missing:
            o = self.by_name[name]
            tokenizer = self.tokenizers[name]
            settings = SamplingSettings(n=1, max_tokens=o.max_new_tokens, temperature=0.0 if greedy else o.temperature,
                                        seed=seed, stop_token_ids=(tokenizer.eos_id,))
            seeds = [stable_seed(seed, name, p.prompt_id) for p in missing]  # independent of batch make-up
            samples = self._engine(name).generate([tokenizer.encode_prompt(p) for p in missing], settings, seeds)
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"{name}.jsonl", "a") as f:
                for prompt, group in zip(missing, samples, strict=True):
                    key, text = self._key(name, prompt, greedy, seed), tokenizer.decode(group[0].token_ids)
                    cache[key] = text
                    f.write(json.dumps({"key": key, "text": text}) + "\n")
        return {p.prompt_id: Response(player=name, prompt_id=p.prompt_id, sample_index=0,
                                      text=cache[self._key(name, p, greedy, seed)]) for p in prompts}


def player_tokenizer(cfg: RunConfig, model: ModelConfig) -> PromptTokenizer:
    """A player's prompt tokenizer: the synthetic task's characters, or its own HF tokenizer + chat template."""
    if cfg.data.format == "synthetic":
        return CharTokenizer()
    from megatron_elo.data.tokenizer import ChatTokenizer

    return ChatTokenizer(model.tokenizer or model.path, apply_chat_template=cfg.data.apply_chat_template,
                         system_prompt=cfg.data.system_prompt)


def load_prompt_sets(cfg: RunConfig) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, held-out prompts) from the synthetic task or the configured files."""
    data = cfg.data
    if data.format == "synthetic":
        synthetic = data.synthetic
        train = make_prompts(synthetic.num_train, seed=synthetic.seed, max_operand=synthetic.max_operand)
        held_out = make_prompts(min(cfg.eval.num_prompts, synthetic.num_eval), seed=synthetic.seed,
                                max_operand=synthetic.max_operand, split="eval")
        return train, held_out
    from megatron_elo.data.prompts import PromptFields, read_prompts

    fields = PromptFields(prompt=data.prompt_field, id=data.id_field, reference=data.reference_field)
    return read_prompts(data.train_path, fields=fields), read_prompts(data.eval_path, fields=fields)[: cfg.eval.num_prompts]


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Held-out win rate of the policy against each eval opponent, noise-free judge (greedy, or sampled
    per ``eval.temperature``)."""

    step: int
    win_rate: float
    ci95: float  # half-width of the normal-approximation 95% interval
    per_opponent: dict[str, float]
    exact: float  # fraction of the policy's held-out answers that are exact


def win_rate_interval(wins: float, games: int) -> tuple[float, float]:
    """(win rate, half-width of its 95% interval): ties count half; normal approximation."""
    if games == 0:
        return float("nan"), float("nan")
    p = wins / games
    return p, 1.96 * math.sqrt(max(p * (1 - p), 0.0) / games)


# ---------------------------------------------------------------- the run


@dataclass
class RunState:
    """What a checkpoint carries besides the trainer."""

    step: int = 0
    elo_history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    mlflow_run_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class StepGames:
    """What the driver's games of one step produced (games -> verdicts -> outcomes -> rewards)."""

    games: list[Game]
    verdicts: list
    outcomes: list[Outcome]
    rewards: np.ndarray  # [P, n] reward per rollout
    valid: np.ndarray  # [P, n] bool: the rollout's game was decided
    probabilities: dict[str, float]  # opponent sampling probabilities this step
    opponents: list[str | None]  # [P] the opponent each prompt was played against (None: point-wise)


class EloEvolveRun:
    """Everything one run owns; ``run()`` executes it. Built on every rank of the world (or the one
    process); see the module docstring for what rank 0, the driver, does besides."""

    def __init__(self, cfg: RunConfig, *, stop_after: int | None = None):
        self.cfg = cfg
        self.stop_after = stop_after  # tests: stop (as if killed) after this many steps of this process
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        if cfg.judge.kind == "llm" and cfg.algorithm.name == "point":
            raise NotSupportedYet("absolute (point-wise) scoring with an LLM judge is not built yet; use a pairwise "
                                  "algorithm or judge.kind=programmatic")
        self.rank, self.world = 0, 1  # set from the process group in run()
        self.tokenizer = player_tokenizer(cfg, cfg.model)
        self.train_prompts, self.eval_prompts = load_prompt_sets(cfg)
        self._prompt_id_cache: dict[str, list[int]] = {}
        self.loader: PromptLoader | DaliPromptLoader | None = None  # the driver's, made in run()
        self.pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm, self.pool, total_steps=cfg.trainer.steps)
        # the LLM judge's engine starts in run()
        self.judge = ArithmeticJudge(noise=cfg.judge.noise, swap_positions=cfg.judge.swap_positions) \
            if cfg.judge.kind == "programmatic" else None
        # held-out games: the task's exact checker when answers are checkable, else the LLM judge (set in run())
        checkable = cfg.data.format == "synthetic" or cfg.judge.kind == "programmatic"
        self.eval_judge = ArithmeticJudge(noise=0.0, swap_positions=False) if checkable else None
        self.state = RunState()

    def _make_loader(self) -> PromptLoader | DaliPromptLoader:
        data = self.cfg.data
        if data.loader == "default":
            return PromptLoader(self.train_prompts, seed=self.cfg.seed, shuffle=data.shuffle)
        from megatron_elo.data.dali import DaliPromptLoader, write_token_shards

        shards = Path(data.token_shards or Path(self.cfg.output_dir) / "prompt_tokens")
        if not (shards / "offsets.npy").is_file():
            log.info("pre-tokenizing %d prompts into %s", len(self.train_prompts), shards)
            write_token_shards([self.tokenizer.encode_prompt(p) for p in self.train_prompts], shards, prompts=self.train_prompts)
        device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        return DaliPromptLoader(self.train_prompts, shards, batch_size=self.cfg.rollout.prompts_per_step, seed=self.cfg.seed,
                                shuffle=data.shuffle, pad_id=self.tokenizer.pad_id, device_id=device_id,
                                encode=self.tokenizer.encode_prompt)

    # ------------------------------------------------------------ set-up

    @property
    def is_driver(self) -> bool:
        """Rank 0: draws prompts, plays the games, keeps the Elo pool, logs."""
        return self.rank == 0

    def _init_distributed(self) -> None:
        """Join the torchrun world (env://), or make a world of one; set rank, world and the device."""
        import os

        from megatron_elo.parallel.spawn import init_world_of_one

        backend = "gloo" if self.cfg.cluster.device == "cpu" else "nccl"
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend)  # torchrun / SLURM set RANK, WORLD_SIZE, MASTER_ADDR/PORT
        init_world_of_one(backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.cfg.cluster.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(), 1))))

    def _from_driver(self, value):
        """``value`` as the driver has it, on every rank (pickled broadcast; identity in a world of one)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _prepare_players(self) -> None:
        """Make the tiny players the config asks for (the driver; the others wait for it)."""
        if self.is_driver:
            self._make_missing_players()
        if self.world > 1:
            dist.barrier()

    def _make_missing_players(self) -> None:
        prepare = self.cfg.prepare
        if prepare is None:
            return
        missing = [(s.path, s.sft_steps) for s in prepare.snapshots if not (Path(s.path) / "config.json").is_file()]
        if missing:
            from megatron_elo.tasks.pretrain import train_snapshots

            log.info("making %d tiny player(s) by SFT on the task: %s", len(missing), [p for p, _ in missing])
            all_snapshots = [(s.path, s.sft_steps) for s in prepare.snapshots]
            train_snapshots(prepare.arch, all_snapshots, seed=prepare.seed, batch_size=prepare.batch_size, lr=prepare.lr,
                            max_operand=self.cfg.data.synthetic.max_operand)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        """The policy's token ids of a prompt (the DALI loader's pre-tokenized ids when it read them)."""
        if prompt.prompt_id not in self._prompt_id_cache:
            self._prompt_id_cache[prompt.prompt_id] = self.tokenizer.encode_prompt(prompt)
        return self._prompt_id_cache[prompt.prompt_id]

    def _next_prompts(self) -> list[Prompt]:
        """The step's prompts, drawn by the driver and sent to every rank with their token ids."""
        batch = None
        if self.is_driver:
            prompts = self.loader.next_batch(self.cfg.rollout.prompts_per_step)
            for prompt, ids in zip(prompts, getattr(self.loader, "last_ids", []), strict=False):
                self._prompt_id_cache[prompt.prompt_id] = ids  # the DALI loader's pre-tokenized ids
            batch = [(p, self._prompt_ids(p)) for p in prompts]
        batch = self._from_driver(batch)
        for prompt, ids in batch:
            self._prompt_id_cache[prompt.prompt_id] = ids
        return [p for p, _ in batch]

    def _opponent_tokenizers(self) -> dict[str, PromptTokenizer]:
        return {o.name: player_tokenizer(self.cfg, o.model) for o in self.cfg.opponents}

    def _build_trainer(self, model: ModelConfig, *, frozen: bool = False) -> PolicyTrainer:
        from megatron_elo.parallel.layout import ParallelLayout
        from megatron_elo.trainer.build import build_policy_trainer
        from megatron_elo.trainer.optimizer import DataParallelOptions

        return build_policy_trainer(model.path, ParallelLayout.from_config(self.cfg), self.cfg.trainer,
                                    total_steps=self.cfg.trainer.steps, dtype=self.cfg.trainer.precision,
                                    device=self.cfg.cluster.device,
                                    pad_vocab_to_multiple_of=model.pad_vocab_to_multiple_of, frozen=frozen,
                                    data_parallel=DataParallelOptions.from_config(self.cfg.parallel))

    # ------------------------------------------------------------ one step

    def _generate(self, prompts: list[Prompt], settings: SamplingSettings) -> list[list[Sample]]:
        """Samples for every prompt, on every rank. Each engine replica (engine DP rank) generates the
        prompts i with i % replicas == replica, its TP ranks together; prompt i's seed is
        ``settings.seed + i`` whatever the layout."""
        seeds = [None if settings.seed is None else settings.seed + i for i in range(len(prompts))]
        if self.world == 1:
            return self.policy_engine.generate([self._prompt_ids(p) for p in prompts], settings, seeds)
        engine_tp, replicas = self.cfg.rollout.engine.tp, self.cfg.rollout.engine.dp
        replica = self.rank // engine_tp
        mine = list(range(replica, len(prompts), replicas))
        # vLLM's DP replicas step in lockstep (they all-reduce batch padding every step): a replica
        # left without prompts would hang the others, so every replica runs the same number, the
        # short ones repeating a prompt whose answers are dropped (measured: 1 prompt on 2 replicas hung).
        share = -(-len(prompts) // replicas)
        padded = mine + [mine[0] if mine else 0] * (share - len(mine))
        samples = self.policy_engine.generate([self._prompt_ids(prompts[i]) for i in padded], settings,
                                              [seeds[i] for i in padded])[: len(mine)] if share else []
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (mine, samples) if self.rank % engine_tp == 0 else None)
        out: list = [None] * len(prompts)
        for replica_share in gathered:  # (prompt indices, their samples) from each replica's TP rank 0
            if replica_share is not None:
                for i, group in zip(*replica_share, strict=True):
                    out[i] = group
        return out

    def _rollouts(self, prompts: list[Prompt], step: int) -> list[list[Response]]:
        r = self.cfg.rollout
        settings = SamplingSettings(n=r.n_per_prompt, max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                    top_k=r.top_k, seed=self.cfg.seed * 1_000_003 + step * 10_007,
                                    stop_token_ids=(self.tokenizer.eos_id,))
        groups = self._generate(prompts, settings)
        return [[Response(player=POLICY, prompt_id=p.prompt_id, sample_index=j, text=self.tokenizer.decode(s.token_ids),
                          token_ids=s.token_ids, logprobs=s.logprobs, finish_reason=s.finish_reason)
                 for j, s in enumerate(group)] for p, group in zip(prompts, groups, strict=True)]

    def _sequences(self, prompts: list[Prompt], samples: list[list[Response]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt + response token rows, right-padded, and the response mask: ([P*n, S] int64, [P*n, S] bool)."""
        rows, masks = [], []
        for prompt, group in zip(prompts, samples, strict=True):
            prompt_ids = self._prompt_ids(prompt)
            for sample in group:
                rows.append(prompt_ids + list(sample.token_ids))
                masks.append([False] * len(prompt_ids) + [True] * len(sample.token_ids))
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [self.tokenizer.pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
        return tokens, mask

    def _logprobs(self, model: PolicyTrainer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, S] log-probs of the response tokens under ``model``'s current weights (0 elsewhere, and on
        pipeline stages before the last, which compute no loss)."""
        logprobs = model.compute_logprobs(tokens)
        return (logprobs if logprobs is not None else torch.zeros(tokens.shape)) * mask

    def _train_batches(self, tokens: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> list[TrainBatch]:
        """One TrainBatch per optimizer step (``global_batch_size`` consecutive sequences): this DP
        rank's contiguous share of it, with old (and reference) log-probs recomputed by the trainer
        itself, all before the first update, so the first update is exactly on-policy."""
        size = self.cfg.trainer.global_batch_size
        share = size // self.trainer.groups.layout.dp
        first = self.trainer.groups.coords.dp_rank * share  # this rank's offset inside each step's sequences
        batches = []
        for start in range(0, len(tokens), size):
            rows = slice(start + first, start + first + share)
            part_tokens, part_mask = tokens[rows], mask[rows]
            reference = self._logprobs(self.reference, part_tokens, part_mask) if self.reference is not None else None
            batches.append(TrainBatch(tokens=part_tokens, response_mask=part_mask, advantages=advantages[rows],
                                      old_logprobs=self._logprobs(self.trainer, part_tokens, part_mask), ref_logprobs=reference))
        return batches

    def _play(self, prompts: list[Prompt], samples: list[list[Response]], step: int, timings: dict[str, float]) -> StepGames:
        """The driver's part of a step: opponents chosen and their answers, judge verdicts, outcomes."""
        import time

        cfg = self.cfg
        clock = time.perf_counter()
        plan = self.algorithm.plan_opponents(prompts, step=step, rng=np.random.default_rng([cfg.seed, step, 1]))
        answers = {}
        for name in sorted({o for o in plan.opponents if o is not None}):
            chosen = [p for p, o in zip(prompts, plan.opponents, strict=True) if o == name]
            answers.update({(pid, name): r for pid, r in self.opponents.answers(name, chosen).items()})
        timings["opponent"] = time.perf_counter() - clock

        clock = time.perf_counter()
        games = self.algorithm.make_games(prompts, samples, answers, plan)
        judge_rng = np.random.default_rng([cfg.seed, step, 2])
        pairwise = cfg.algorithm.name != "point"
        verdicts = self.judge.judge_pairs(games, judge_rng) if pairwise else self.judge.score(games, judge_rng)
        outcomes = self.algorithm.outcomes(games, verdicts)
        rewards, valid = outcome_matrix(outcomes, [p.prompt_id for p in prompts], cfg.rollout.n_per_prompt)
        timings["judge"] = time.perf_counter() - clock
        return StepGames(games=games, verdicts=verdicts, outcomes=outcomes, rewards=rewards, valid=valid,
                         probabilities=plan.probabilities, opponents=plan.opponents)

    def step(self, step: int) -> dict[str, float]:
        """One full step (every rank calls it); returns its metrics on the driver, {} elsewhere."""
        import time

        timings: dict[str, float] = {}
        clock = time.perf_counter()
        prompts = self._next_prompts()
        samples = self._rollouts(prompts, step)
        self.policy_engine.sleep()  # GPU: weights and KV cache released for the update (no-op on CPU)
        timings["generate"] = time.perf_counter() - clock

        played = self._play(prompts, samples, step, timings) if self.is_driver else None
        clock = time.perf_counter()
        advantages = None
        if self.is_driver:
            advantages = self._advantages(torch.tensor(played.rewards), torch.tensor(played.valid)).reshape(-1)
        advantages = self._from_driver(advantages)  # [P * n]
        tokens, mask = self._sequences(prompts, samples)
        train_stats = [self.trainer.train_step(batch) for batch in self._train_batches(tokens, mask, advantages)]
        timings["train"] = time.perf_counter() - clock

        clock = time.perf_counter()
        self.policy_engine.wake_up()
        self._sync_policy_engine()
        timings["sync"] = time.perf_counter() - clock
        if not self.is_driver:
            return {}

        self.algorithm.update_ratings(played.outcomes)
        self.state.elo_history.append({"step": step + 1, **self.pool.ratings()})
        self._last_games = (played.games, played.verdicts)
        return self._metrics(train_stats, played, timings, response_tokens=float(mask.sum()))

    def _advantages(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[P, n] outcomes -> [P, n] group-normalised advantages (torch reference or the Triton kernel;
        the fused loss broadcasts them onto tokens itself, so no token mask is passed here)."""
        std_normalize = self.cfg.trainer.std_normalize
        if self.cfg.trainer.kernels == "torch":
            return group_advantages(rewards, valid, std_normalize=std_normalize)
        from kernels import token_advantages

        device = self.trainer.device  # the kernel runs where the trainer does (CUDA, or the interpreter on CPU)
        no_tokens = torch.zeros(rewards.numel(), 0, dtype=torch.bool, device=device)
        advantages = token_advantages(rewards.to(device), valid.to(device), no_tokens, std_normalize=std_normalize)[0]
        return advantages.reshape(rewards.shape).cpu()

    def _metrics(self, train_stats, played: StepGames, timings: dict[str, float], *, response_tokens: float) -> dict[str, float]:
        outcomes, rewards, valid, probabilities = played.outcomes, played.rewards, played.valid, played.probabilities
        last = train_stats[-1]
        metrics = {"loss": float(np.mean([s.loss for s in train_stats])), "pg_loss": last.pg_loss, "kl": last.kl,
                   "entropy": last.entropy, "clip_fraction": last.clip_fraction, "grad_norm": last.grad_norm, "lr": last.lr,
                   "reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
                   "invalid_verdicts": float((~valid).sum()), "elo/policy": self.pool.policy_rating,
                   "response_tokens": response_tokens}
        total_time = sum(timings.values())
        metrics["tokens_per_s"] = response_tokens / max(total_time, 1e-9)
        if isinstance(self.judge, LLMJudge):
            metrics.update(self.judge.stats.as_metrics())
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["no_signal_groups"], no_signal = no_signal_rates(rewards, valid, played.opponents)
        metrics.update({f"no_signal_groups/{name}": rate for name, rate in no_signal.items()})
        for member in self.pool.members:
            mine = [o for o in outcomes if o.opponent == member.name and o.valid]
            metrics[f"elo/{member.name}"] = member.rating
            metrics[f"p_select/{member.name}"] = probabilities.get(member.name, 0.0)
            if mine:
                for kind in ("policy", "tie", "opponent"):
                    label = {"policy": "win", "tie": "tie", "opponent": "loss"}[kind]
                    metrics[f"{label}_rate/{member.name}"] = sum(o.winner == kind for o in mine) / len(mine)
        return metrics

    def _sync_policy_engine(self) -> None:
        from megatron_elo.rollout.weight_sync import hf_weight_stream

        self.policy_engine.load_weights(hf_weight_stream(self.trainer.model, self.trainer.groups, self.trainer.arch,
                                                         engine=self.policy_engine.shard()))

    # ------------------------------------------------------------ evaluation

    def evaluate(self, step: int) -> EvalResult:
        """The policy vs each eval opponent on the held-out prompts, noise-free judge: greedy against
        greedy answers, or (eval.temperature > 0) samples_per_prompt samples against one sampled answer
        per opponent, seeded by eval.seed alike at every evaluation and in every run. Every rank
        generates its share; the driver judges; every rank gets the result."""
        spec = self.cfg.eval
        settings = SamplingSettings(n=spec.samples_per_prompt, max_tokens=self.cfg.rollout.max_new_tokens,
                                    temperature=spec.temperature, seed=stable_seed(spec.seed, "eval"),
                                    stop_token_ids=(self.tokenizer.eos_id,))
        groups = self._generate(self.eval_prompts, settings)
        policy = [[Response(player=POLICY, prompt_id=p.prompt_id, sample_index=j, text=self.tokenizer.decode(s.token_ids))
                   for j, s in enumerate(group)] for p, group in zip(self.eval_prompts, groups, strict=True)]
        return self._from_driver(self._judge_eval(step, policy) if self.is_driver else None)

    def _judge_eval(self, step: int, policy: list[list[Response]]) -> EvalResult:
        """policy: [prompts][samples] answers -> win rate over every (prompt, sample, opponent) game."""
        names = self.cfg.eval.opponents or [o.name for o in self.cfg.opponents]
        greedy = self.cfg.eval.temperature == 0
        total_wins, total_games, per_opponent = 0.0, 0, {}
        rng = np.random.default_rng(0)
        for name in names:
            answers = self.opponents.answers(name, self.eval_prompts, greedy=greedy, seed=self.cfg.eval.seed)
            games = [Game(game_id=len(group) * i + j, prompt=p, policy=r, opponent=answers[p.prompt_id])
                     for i, (p, group) in enumerate(zip(self.eval_prompts, policy, strict=True)) for j, r in enumerate(group)]
            verdicts = self.eval_judge.judge_pairs(games, rng)
            wins = sum(SCORE_OF_WINNER[v.winner] for v in verdicts)
            per_opponent[name] = wins / len(games)
            total_wins, total_games = total_wins + wins, total_games + len(games)
        rate, half = win_rate_interval(total_wins, total_games)
        checkable = [(p, r) for p, group in zip(self.eval_prompts, policy, strict=True) for r in group if p.reference is not None]
        exact = float(np.mean([r.text.strip() == p.reference for p, r in checkable])) if checkable else float("nan")
        return EvalResult(step=step, win_rate=rate, ci95=half, per_opponent=per_opponent, exact=exact)

    def _log_eval(self, result: EvalResult, tracker: Tracker) -> None:
        self.state.evals.append(dataclasses.asdict(result))
        metrics = {"eval/win_rate": result.win_rate, "eval/win_rate_ci95": result.ci95, "eval/exact": result.exact}
        metrics.update({f"eval/win_rate/{k}": v for k, v in result.per_opponent.items()})
        tracker.log_metrics(metrics, step=result.step)
        if self.is_driver:
            log.info("eval at step %d: held-out win rate %.3f +- %.3f (exact %.2f) %s", result.step, result.win_rate,
                     result.ci95, result.exact, {k: round(v, 3) for k, v in result.per_opponent.items()})

    # ------------------------------------------------------------ checkpoints

    def _save(self, tracker: Tracker) -> None:
        from megatron_elo.trainer.checkpoint import save_checkpoint

        extra = None  # the driver's run state goes into meta.json; every rank writes its trainer shard
        if self.is_driver:
            extra = {"loader": self.loader.state_dict(), "pool": self.pool.state_dict(),
                     "state": dataclasses.asdict(self.state) | {"mlflow_run_id": tracker.run_id}}
        save_checkpoint(self.trainer, self.run_dir / "checkpoints", extra=extra, keep_last=self.cfg.checkpoint.keep_last)

    def _resume(self) -> bool:
        from megatron_elo.trainer.checkpoint import latest_checkpoint, load_checkpoint

        if self.cfg.checkpoint.resume != "auto":
            return False
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            return False
        extra = load_checkpoint(self.trainer, latest)
        if self.is_driver:
            self.loader.load_state_dict(extra["loader"])
        self.pool.load_state_dict(extra["pool"])
        self.state = RunState(**extra["state"])
        log.info("resumed from %s at step %d", latest, self.state.step)
        return True

    # ------------------------------------------------------------ artifacts

    def _write_artifacts(self, tracker: Tracker) -> None:
        out = self.run_dir / "artifacts"
        out.mkdir(parents=True, exist_ok=True)
        (out / "resolved_config.yaml").write_text(dump_yaml(self.cfg))
        names = [POLICY, *self.pool.names]
        with open(out / "elo_history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *names])
            writer.writeheader()
            writer.writerows(self.state.elo_history)
        self._plot_ratings(out / "elo_ratings.png", names)
        games, verdicts = getattr(self, "_last_games", ([], []))
        with open(out / "sample_games.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt", "reference", "policy_answer", "opponent", "opponent_answer", "verdict"])
            for game, verdict in list(zip(games, verdicts, strict=True))[:64]:
                writer.writerow([game.prompt.text, game.prompt.reference, game.policy.text, game.opponent_name,
                                 game.opponent.text if game.opponent else "", verdict.winner or verdict.score])
        (out / "evals.json").write_text(json.dumps(self.state.evals, indent=2))
        tracker.log_artifact(out)

    def _plot_ratings(self, path: Path, names: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [row["step"] for row in self.state.elo_history]
        for name in names:
            ax.plot(steps, [row[name] for row in self.state.elo_history], label=name, linewidth=2.5 if name == POLICY else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("Elo rating")
        ax.set_title(f"{self.cfg.algorithm.name}: ratings over training")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def _export(self, tracker: Tracker) -> Path | None:
        from megatron_elo.models.convert import megatron_dir_to_hf
        from megatron_elo.trainer.checkpoint import latest_checkpoint

        latest = latest_checkpoint(self.run_dir / "checkpoints")
        if not self.cfg.checkpoint.export_hf or latest is None:
            return None
        target = self.run_dir / "export_hf" / latest.name
        if not target.exists():
            megatron_dir_to_hf(latest, target)
        tracker.log_artifact(target, "export_hf")
        return target

    def evaluate_checkpoint(self, checkpoint: str | Path | None = None) -> EvalResult:
        """Held-out win rate of a training checkpoint (default: the run's newest) or of the initial
        policy when the run has none; nothing is trained or written but an HF export beside it."""
        import tempfile

        from megatron_elo.models.convert import megatron_dir_to_hf
        from megatron_elo.trainer.checkpoint import latest_checkpoint

        self._prepare_players()
        path = Path(checkpoint) if checkpoint else latest_checkpoint(self.run_dir / "checkpoints")
        model_dir, step = self.cfg.model.path, 0
        if path is not None:
            model_dir = tempfile.mkdtemp(prefix="megatron-elo-eval-")
            megatron_dir_to_hf(path, Path(model_dir) / "hf")
            model_dir, step = str(Path(model_dir) / "hf"), int(json.loads((path / "meta.json").read_text())["step"])
        self.policy_engine = RolloutEngine(model_dir, self.cfg.rollout.engine, seed=self.cfg.seed, dtype=self.cfg.model.dtype)
        self.opponents = OpponentAnswers(self.cfg, self._opponent_tokenizers())
        try:
            return self.evaluate(step)
        finally:
            self.opponents.close()

    # ------------------------------------------------------------ the whole run

    def run(self) -> dict:
        """Prepare, train (resuming if a checkpoint exists), evaluate, export; returns a summary (the
        driver's; other ranks return {"finished", "step", "rank"}). Every rank of the world calls it."""
        torch.manual_seed(self.cfg.seed)
        self._init_distributed()
        self._prepare_players()
        if self.is_driver:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "resolved_config.yaml").write_text(dump_yaml(self.cfg))
            self.loader = self._make_loader()
        self.trainer = self._build_trainer(self.cfg.model)
        self.reference = self._build_trainer(self.cfg.model, frozen=True) if self.cfg.trainer.kl_coef > 0 else None
        resumed = self._resume()
        tracker = make_tracker(self.cfg.tracking, rank=self.rank, output_dir=self.cfg.output_dir, run_name=self.cfg.run_name,
                               run_id=self.state.mlflow_run_id)
        try:
            if self.is_driver:
                self._open_players()
            summary = self._train(tracker, resumed)
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            self._close_players()
        tracker.finish("FINISHED" if summary["finished"] else "KILLED")
        return summary

    def _open_players(self) -> None:
        """The driver's opponents (engines start on their first cache miss) and the LLM judge's engine."""
        self.opponents = OpponentAnswers(self.cfg, self._opponent_tokenizers(), world_size=self.world)
        if self.judge is None:
            self.judge = build_llm_judge(self.cfg.judge, seed=self.cfg.seed, cluster=self.cfg.cluster,
                                         world_size=self.world, log_dir=Path(self.cfg.output_dir) / "engine_logs")
            self.eval_judge = self.eval_judge or self.judge

    def _close_players(self) -> None:
        """Stop the opponents' and the judge's engines (their server processes, when served)."""
        if getattr(self, "opponents", None) is not None:
            self.opponents.close()
        if isinstance(self.judge, LLMJudge):
            self.judge.backend.close()

    def _train(self, tracker: Tracker, resumed: bool) -> dict:
        cfg = self.cfg
        if not resumed:
            tracker.log_params(flatten(config_to_dict(cfg)))
        self.policy_engine = RolloutEngine(cfg.model.path, cfg.rollout.engine, seed=cfg.seed, dtype=cfg.model.dtype,
                                           distributed=self.world > 1)
        if resumed:
            self._sync_policy_engine()
        if not self.state.evals:
            self._log_eval(self.evaluate(self.state.step), tracker)
        start, steps_here = self.state.step, 0
        with progress_bar(total=cfg.trainer.steps, description=f"{cfg.algorithm.name}", enabled=self.is_driver) as bar:
            bar.advance(start)
            for step in range(start, cfg.trainer.steps):
                if self.stop_after is not None and steps_here >= self.stop_after:
                    return {"finished": False, "step": step}
                metrics = self.step(step)
                self.state.step, steps_here = step + 1, steps_here + 1
                if self.is_driver:
                    if self.state.step % cfg.tracking.log_every == 0:
                        tracker.log_metrics(metrics, step=self.state.step)
                    bar.advance()
                    bar.update(reward=metrics["reward_mean"], elo=metrics["elo/policy"])
                if cfg.eval.every_steps and self.state.step % cfg.eval.every_steps == 0 and self.state.step < cfg.trainer.steps:
                    self._log_eval(self.evaluate(self.state.step), tracker)
                if cfg.checkpoint.every_steps and self.state.step % cfg.checkpoint.every_steps == 0:
                    self._save(tracker)
        final = self.evaluate(self.state.step)
        self._log_eval(final, tracker)
        self._save(tracker)
        if not self.is_driver:
            return {"finished": True, "step": self.state.step, "rank": self.rank}
        self._write_artifacts(tracker)
        export = self._export(tracker)
        first = self.state.evals[0]
        summary = {"finished": True, "step": self.state.step, "win_rate_before": first["win_rate"],
                   "win_rate_after": final.win_rate, "ci95_after": final.ci95, "exact_before": first["exact"],
                   "exact_after": final.exact, "elo": self.pool.ratings(), "mlflow": tracker.location,
                   "export": str(export) if export else None, "run_dir": str(self.run_dir), "evals": self.state.evals}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
