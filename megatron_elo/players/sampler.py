"""A trained player's colocated vLLM engine, its replicas sharing a batch of prompts.

    sampler = PolicySampler(engine, world=world, tokenizer=tokenizer)
    groups = sampler.generate(token_ids, settings)                     # [P][n] Sample, on every rank
    answers = sampler.respond(prompts, token_ids, settings, player="policy")   # [P][n] Response

In a world every rank holds one engine shard (engine TP x DP spans the world, or the player's slice of it:
``world`` is then that slice); each engine replica
(engine DP rank) generates the prompts i with i % replicas == replica, its TP ranks together, and the
samples are gathered to every rank. Each request's seed is computed on every rank from the whole
batch (``respond``: from ``settings.seed`` and the prompt ids, with disjoint n-sample streams), so
results do not depend on the layout and no two samples of a call share a random stream.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_elo.data.tokenizer import PromptTokenizer
from megatron_elo.flow import Prompt, Response
from megatron_elo.parallel.world import World
from megatron_elo.rollout.engine import RolloutEngine, Sample, SamplingSettings, default_seeds
from megatron_elo.utils.seeds import request_seeds


class PolicySampler:
    """Generation on the colocated engine, sharded over its replicas, results on every rank."""

    def __init__(self, engine: RolloutEngine, *, world: World, tokenizer: PromptTokenizer):
        self.engine, self.world, self.tokenizer = engine, world, tokenizer

    def generate(self, token_ids: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int | None] | None = None) -> list[list[Sample]]:
        """``settings.n`` samples of every prompt (token ids), in prompt order, on every rank; seeds:
        one per prompt (default: by index, ``default_seeds``)."""
        seeds = default_seeds(settings, len(token_ids)) if seeds is None else list(seeds)
        if self.world.size == 1:
            return self.engine.generate(token_ids, settings, seeds)
        engine_tp, replicas = self.engine.config.tp, self.engine.config.dp
        replica = self.world.rank // engine_tp
        mine = list(range(replica, len(token_ids), replicas))
        # vLLM's DP replicas step in lockstep (they all-reduce batch padding every step): a replica
        # left without prompts would hang the others, so every replica runs the same number, the
        # short ones repeating a prompt whose answers are dropped (measured: 1 prompt on 2 replicas hung).
        share = -(-len(token_ids) // replicas)
        padded = mine + [mine[0] if mine else 0] * (share - len(mine))
        samples = self.engine.generate([token_ids[i] for i in padded], settings,
                                       [seeds[i] for i in padded])[: len(mine)] if share else []
        gathered = self.world.gather((mine, samples) if self.world.rank % engine_tp == 0 else None,
                                     waiting_for="the engine replicas' samples")
        out: list = [None] * len(token_ids)
        for replica_share in gathered:  # (prompt indices, their samples) from each replica's TP rank 0
            if replica_share is not None:
                for i, group in zip(*replica_share, strict=True):
                    out[i] = group
        return out

    def respond(self, prompts: Sequence[Prompt], token_ids: Sequence[Sequence[int]], settings: SamplingSettings, *,
                player: str) -> list[list[Response]]:
        """[P][n] decoded answers of ``player`` (token ids, sampler log-probs and finish reason kept);
        prompt p's samples are seeded from (``settings.seed``, p's id), whatever else shares the call."""
        seeds = None if settings.seed is None else request_seeds(settings.seed, [p.prompt_id for p in prompts], settings.n)
        groups = self.generate(token_ids, settings, seeds)
        return [[Response(player=player, prompt_id=p.prompt_id, sample_index=j, text=self.tokenizer.decode(s.token_ids),
                          token_ids=s.token_ids, logprobs=s.logprobs, finish_reason=s.finish_reason)
                 for j, s in enumerate(group)] for p, group in zip(prompts, groups, strict=True)]
