"""Checks of the preference-pair recipes (pairs_online, pairs_offline), called by ``validate``."""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig

# sparta, eva, tsr, evolve: their update (loss, beta, reference, epochs)
PAIR_RECIPES = ("pairs_online", "pairs_offline", "sparta", "eva", "tsr", "evolve")


def check_pairs(cfg: RunConfig, need, *, check_paths: bool) -> None:
    """Record every problem of ``cfg``'s pair settings with ``need(condition, message)``."""
    name, pairs, trainer = cfg.algorithm.name, cfg.algorithm.pairs, cfg.trainer
    if name not in PAIR_RECIPES:
        return
    need(trainer.micro_batch_size % 2 == 0, f"trainer.micro_batch_size={trainer.micro_batch_size}: a pair's chosen and "
                                            f"rejected rows share a micro-batch; make it even")
    need(trainer.kl_coef == 0 and trainer.entropy_coef == 0,
         "trainer.kl_coef / trainer.entropy_coef: GRPO's terms; the pair losses regularise through algorithm.pairs.beta "
         "and their reference; set both to 0")
    need(pairs.beta > 0, f"algorithm.pairs.beta: must be > 0, got {pairs.beta}")
    need(0 <= pairs.label_smoothing < 0.5, f"algorithm.pairs.label_smoothing: must be in [0, 0.5), got {pairs.label_smoothing}")
    need(pairs.orpo_lambda >= 0, f"algorithm.pairs.orpo_lambda: must be >= 0, got {pairs.orpo_lambda}")
    need(0 < pairs.inpo_tau_ratio < 1, f"algorithm.pairs.inpo_tau_ratio: tau / eta must be in (0, 1), got {pairs.inpo_tau_ratio}")
    need(pairs.epochs >= 1, f"algorithm.pairs.epochs: must be >= 1, got {pairs.epochs}")
    need(not cfg.rollout.overlap_judging, "rollout.overlap_judging: the GRPO recipes' overlap; a pair recipe judges and "
                                          "trains each iteration in turn: set it to false")
    if name in ("sparta", "eva", "tsr", "evolve"):  # their own settings: validate_sparta.py, validate_self_improve.py
        return
    if name == "pairs_online":
        need(cfg.rollout.n_per_prompt >= 2, f"rollout.n_per_prompt={cfg.rollout.n_per_prompt}: a pair needs two samples "
                                            f"of a prompt; use >= 2")
        need(pairs.games == "tournament" or pairs.rule != "winner_vs_beaten",
             "algorithm.pairs.rule=winner_vs_beaten: needs algorithm.pairs.games=tournament (games among the samples)")
        need(pairs.games == "tournament" or bool(cfg.opponents),
             "opponents: algorithm.pairs.games=opponents plays the Elo pool; add opponents or use games=tournament")
        need(pairs.path is None, "algorithm.pairs.path: pairs_online makes its pairs from games; remove it or use pairs_offline")
        return
    sampled_only = pairs.loss in ("sppo", "inpo") or pairs.reference == "previous_iterate"
    need(not sampled_only, f"algorithm.pairs: loss={pairs.loss} / reference={pairs.reference} measure against the start of "
                           f"an iteration of sampled pairs; pairs_offline has none: use pairs_online, or dpo / ipo / simpo "
                           f"/ orpo with reference=initial")
    need(pairs.epochs == 1, "algorithm.pairs.epochs: pairs_offline passes over the file for trainer.steps steps; "
                            "leave epochs at 1 (it is the online iterations' setting)")
    if not need(pairs.path is not None, "algorithm.pairs.path: pairs_offline trains on a pair file; name it"):
        return
    need(pairs.path.endswith((".jsonl", ".json", ".parquet")),
         f"algorithm.pairs.path: {pairs.path!r} should end in .jsonl or .parquet")
    need(not check_paths or Path(pairs.path).is_file(), f"algorithm.pairs.path: file {pairs.path!r} does not exist")
