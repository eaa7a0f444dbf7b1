"""Checks of the self-improvement methods' settings (``algorithm.eva`` / ``tsr`` / ``evolve``), called by ``validate``."""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig

SELF_IMPROVE = ("eva", "tsr", "evolve")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EVA_TEMPLATES = tuple(CONFIGS / "eva" / f"{name}.txt" for name in ("deepen", "constraints", "concretize", "reasoning"))
DEFAULT_REFINE_TEMPLATE = CONFIGS / "evolve" / "refine.txt"


def scores_single_answers(cfg: RunConfig) -> bool:
    """The method rewards each answer alone (a grade, a reward model's score), not by games against opponents."""
    name = cfg.algorithm.name
    return name in ("point", "tsr", "evolve") or (name == "eva" and cfg.algorithm.eva.scorer == "absolute")


def eva_templates(cfg: RunConfig) -> list[Path]:
    """The LLM creator's rewrite templates: algorithm.eva.templates, else the built-in four."""
    return [Path(t) for t in cfg.algorithm.eva.templates] or list(EVA_TEMPLATES)


def refine_template_path(cfg: RunConfig) -> Path:
    """EVOLVE's refinement template: algorithm.evolve.refine_template, else the built-in one."""
    chosen = cfg.algorithm.evolve.refine_template
    return Path(chosen) if chosen is not None else DEFAULT_REFINE_TEMPLATE


def _check_template(path: Path, fields: tuple[str, ...], where: str, need) -> None:
    if not need(path.is_file(), f"{where}: file {str(path)!r} does not exist"):
        return
    missing = [field for field in fields if field not in path.read_text()]
    need(not missing, f"{where}: {str(path)!r} lacks {missing}")


def check_self_improve(cfg: RunConfig, need, *, check_paths: bool) -> None:
    """Record every problem of ``cfg``'s eva / tsr / evolve settings with ``need(condition, message)``."""
    name = cfg.algorithm.name
    if name not in SELF_IMPROVE:
        return
    opponents = {o.name: o for o in cfg.opponents}
    need(cfg.rollout.n_per_prompt >= 2, f"rollout.n_per_prompt={cfg.rollout.n_per_prompt}: {name} ranks a prompt's samples "
                                        f"into chosen and rejected; use >= 2 (authors: eva 6, tsr 7)")
    soft_ok = name == "eva" and cfg.algorithm.eva.scorer == "opponents"  # rewards are game outcomes: win rates
    need(cfg.algorithm.pairs.sppo_targets == "hard" or soft_ok,
         f"algorithm.pairs.sppo_targets=win_rate: {name}'s pairs come from scores, not win rates; use hard")
    if name == "eva":
        _check_eva(cfg, need, opponents, check_paths=check_paths)
    elif name == "tsr":
        anchor = cfg.algorithm.tsr.anchor
        if need(anchor in opponents, f"algorithm.tsr.anchor: {anchor!r} is not an opponent name; add an opponent that "
                                     f"serves the initial checkpoint (model.path) and name it (opponents: {sorted(opponents)})"):
            served, rollout = opponents[anchor], cfg.rollout
            need(served.model.path == cfg.model.path, f"algorithm.tsr.anchor: opponent {anchor!r} serves "
                                                      f"{served.model.path!r}, but M_0 is the initial model, "
                                                      f"model.path={cfg.model.path!r}; point it there")
            need((served.temperature, served.max_new_tokens) == (rollout.temperature, rollout.max_new_tokens),
                 f"opponents.{anchor}: M_0 samples at temperature {served.temperature}, max_new_tokens "
                 f"{served.max_new_tokens}, M_i at rollout's {rollout.temperature}, {rollout.max_new_tokens}; make "
                 f"them equal (the two models' samples are compared)")
    else:
        evolve = cfg.algorithm.evolve
        need(evolve.chain >= 1, f"algorithm.evolve.chain: at least one refinement, got {evolve.chain}")
        need(0.0 <= evolve.refine_share <= 1.0, f"algorithm.evolve.refine_share: must be in [0, 1], got {evolve.refine_share}")
        need(cfg.eval.benchmark is None, "eval.benchmark: an evolve run evaluates direct and refined answers against the "
                                         "eval opponents; run the benchmark on its export (megatron-elo eval)")
        if check_paths:
            _check_template(refine_template_path(cfg), ("{prompt}", "{draft}"), "algorithm.evolve.refine_template", need)


def _check_eva(cfg: RunConfig, need, opponents: dict, *, check_paths: bool) -> None:
    eva = cfg.algorithm.eva
    need(cfg.algorithm.pairs.rule in ("best_vs_worst", "all_decided"),
         f"algorithm.pairs.rule={cfg.algorithm.pairs.rule}: eva pairs a prompt's samples by their rewards; use "
         f"best_vs_worst (authors) or all_decided")
    need(0.0 < eva.evolve_fraction <= 1.0, f"algorithm.eva.evolve_fraction: must be in (0, 1], got {eva.evolve_fraction}")
    need(eva.rewrites >= 1, f"algorithm.eva.rewrites: at least 1, got {eva.rewrites}")
    need(0.0 <= eva.evolved_share <= 1.0, f"algorithm.eva.evolved_share: must be in [0, 1], got {eva.evolved_share}")
    need(eva.buffer_size >= 1, f"algorithm.eva.buffer_size: at least 1, got {eva.buffer_size}")
    need(eva.scorer == "absolute" or bool(opponents), "algorithm.eva.scorer=opponents: plays the Elo pool; add opponents "
                                                      "or use scorer=absolute")
    if eva.creator == "programmatic":
        synthetic = cfg.data.format == "synthetic" and cfg.data.synthetic.task == "arithmetic"
        need(synthetic, "algorithm.eva.creator=programmatic: rewrites the arithmetic task's problems (data.format="
                        "synthetic); name an opponent to rewrite free-text prompts")
        return
    need(eva.creator in opponents, f"algorithm.eva.creator: {eva.creator!r} is neither programmatic nor an opponent name "
                                   f"({sorted(opponents)})")
    need(cfg.judge.kind == "llm" or cfg.algorithm.reward_model is not None,
         "algorithm.eva.creator: an LLM creator's prompts have no reference answers for the programmatic judge; use "
         "judge.kind=llm or algorithm.reward_model")
    if check_paths:
        for i, path in enumerate(eva_templates(cfg)):
            _check_template(path, ("{prompt}",), f"algorithm.eva.templates.{i}", need)
