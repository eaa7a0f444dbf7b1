"""The ``megatron-elo`` command.

    megatron-elo train configs/tiny_cpu.yaml                       # run (main job)
    megatron-elo train configs/tiny_cpu.yaml trainer.lr=2e-6 --dry-run   # validate, print config + layout
    megatron-elo train --help                                      # every config group and field
    megatron-elo serve configs/qwen2.5-7b_elo_evolve.yaml --node 1   # a dedicated node's opponent / judge servers
    megatron-elo eval configs/tiny_cpu.yaml --checkpoint DIR ...    # held-out win rate of checkpoints
    megatron-elo eval CONFIG --benchmark all --models base=/ckpt/qwen   # AlpacaEval / MT-Bench / Arena-Hard style
    megatron-elo {eval,serve,bench,convert,compare} --help

Exit codes: 0 ok, 2 bad configuration or usage, 3 the requested stage is not built yet, 4 a server
failed to start or died (`serve`), 5 a rank waited for the driver longer than cluster.timeout_minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from importlib import import_module

from megatron_elo.config.loader import ConfigError, dump_yaml, load_config
from megatron_elo.config.schema import RunConfig
from megatron_elo.config.validate import validate, world_size_from_env
from megatron_elo.parallel.layout import DevicePlan, format_devices, plan_devices
from megatron_elo.parallel.world import DriverTimeout
from megatron_elo.runner.errors import EngineStopped
from megatron_elo.utils.logging import setup_logging

EXIT_BAD_CONFIG = 2
EXIT_NOT_BUILT = 3
EXIT_SERVER = 4
EXIT_TIMEOUT = 5
EXIT_ENGINE_DOWN = 6  # a served engine died for good: checkpointed, rerun to resume


class NotBuiltYet(RuntimeError):
    """A stage whose implementation has not landed; the message names the tracking issue."""


# ---------------------------------------------------------------- help text from the schema


def _type_name(hint: typing.Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if args and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + "?"
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return getattr(hint, "__name__", str(hint))


def describe_fields(cls: type, prefix: str = "", depth: int = 0) -> list[str]:
    """One help line per config field, nested groups indented: ``trainer.lr  float = 1e-06  Peak ...``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        hint = hints[f.name]
        inner = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)
        if typing.get_origin(hint) is list:
            inner = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(inner):
            suffix = " (list; index or name: opponents.NAME.x=...)" if typing.get_origin(hint) is list else ""
            lines.append(f"{'  ' * depth}{dotted}:  {f.metadata.get('help', '')}{suffix}")
            child_prefix = f"{dotted}.N." if typing.get_origin(hint) is list else f"{dotted}."
            lines += describe_fields(inner, child_prefix, depth + 1)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            "required" if f.default_factory is dataclasses.MISSING else f.default_factory())
        lines.append(f"{'  ' * depth}{dotted}  [{_type_name(hint)} = {default}]  {f.metadata.get('help', '')}")
    return lines


CONFIG_HELP = (
    "config groups (set in the YAML file or as dotted overrides KEY=VALUE after it):\n\n"
    + "\n".join(describe_fields(RunConfig))
)


# ---------------------------------------------------------------- the layout table


def print_plan(plan: DevicePlan) -> None:
    """Print the trainer's TP/PP/DP rank table and each engine's devices (rich tables)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    layout, slices = plan.layout, plan.slices
    sliced = f" x {slices.count} slices side by side" if slices else ""
    trainer = Table(title=f"trainer: TP={layout.tp} PP={layout.pp} DP={layout.dp}{sliced} on {len(plan.trainer_ranks)} "
                          f"{plan.device} rank(s)")
    for column in ("rank", "node", "device", *(("slice",) if slices else ()), "tp_rank", "pp_rank", "dp_rank"):
        trainer.add_column(column, justify="right")
    for coords, node, device in plan.trainer_ranks:
        where = (slices.index_of(coords.rank),) if slices else ()
        trainer.add_row(*(str(v) for v in (coords.rank, node, device, *where, coords.tp_rank, coords.pp_rank, coords.dp_rank)))
    engines = Table(title="engines (vLLM)")
    for column in ("engine", "role", "tp", "dp", "placement", "devices (node:local)"):
        engines.add_column(column)
    for e in plan.engines:
        engines.add_row(e.name, e.role, str(e.tp), str(e.dp), e.placement, format_devices(e.devices))
    console.print(trainer)
    console.print(engines)


# ---------------------------------------------------------------- subcommands


def load_and_validate(config: str, overrides: list[str], *, check_paths: bool = True) -> RunConfig:
    """Load YAML + overrides and run every start-up check (WORLD_SIZE from the launcher, if set)."""
    cfg = load_config(config, overrides)
    return validate(cfg, world_size=world_size_from_env(), check_paths=check_paths)


def cmd_train(args: argparse.Namespace) -> int:
    if args.no_check_paths and not args.dry_run:
        raise ConfigError(["--no-check-paths: only allowed with --dry-run (a real run needs its files)"])
    cfg = load_and_validate(args.config, args.overrides, check_paths=not args.no_check_paths)
    if args.dry_run:
        print(dump_yaml(cfg))
        print_plan(plan_devices(cfg))
        print("configuration is valid (dry run: nothing started)")
        return 0
    if cfg.trainer.kernels == "triton":
        import logging

        import torch

        from kernels._runtime import enable_interpreter_without_cuda

        if not torch.cuda.is_available() and enable_interpreter_without_cuda():
            logging.getLogger("megatron_elo").warning(
                "trainer.kernels=triton without CUDA: the kernels run in Triton's interpreter (correct, slow)")
    from megatron_elo.recipes import NotSupportedYet
    from megatron_elo.runner.runner import Runner

    try:
        summary = Runner(cfg).run()
    except NotSupportedYet as err:
        raise NotBuiltYet(str(err)) from None
    if "rank" not in summary:  # the driver's summary; other ranks of a torchrun world stay quiet
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """The end-of-run report: held-out (or validation) win rate before and after, ratings, where everything is."""
    split = summary.get("eval_split", "held_out").replace("_", "-")
    if summary["win_rate_after"] is None:
        print(f"trained {summary['step']} steps; no evaluation (eval.num_prompts=0)")
    else:
        print(f"{split} win rate: {summary['win_rate_before']:.3f} -> {summary['win_rate_after']:.3f} "
              f"(95% CI +-{summary['ci95_after']:.3f}); exact answers {summary['exact_before']:.2f} -> "
              f"{summary['exact_after']:.2f}")
    if summary["elo"]:
        print("Elo:", ", ".join(f"{k} {v:.0f}" for k, v in summary["elo"].items()))
    print(f"run directory: {summary['run_dir']}")
    if summary.get("export"):
        print(f"final policy (HF format): {summary['export']}")
    if summary.get("mlflow"):
        print(f"MLflow: {summary['mlflow']}  (browse: mlflow ui --backend-store-uri {summary['mlflow'].split(' ')[0]})")


def parse_models(items: list[str]) -> dict[str, str]:
    """--models NAME=PATH ... -> {name: path}."""
    models = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError([f"--models {item!r}: write NAME=PATH (an HF model directory)"])
        models[name] = path
    return models


def cmd_eval(args: argparse.Namespace) -> int:
    from megatron_elo.recipes import NotSupportedYet
    from megatron_elo.runner.runner import evaluate_checkpoint

    cfg = load_and_validate(args.config, args.overrides)
    if args.benchmark:
        return _eval_benchmarks(cfg, args)
    if args.models:
        raise ConfigError(["--models: only with --benchmark (the held-out win rate evaluates the run's own checkpoints)"])
    for checkpoint in args.checkpoint or [None]:
        try:
            result = evaluate_checkpoint(cfg, checkpoint)
        except NotSupportedYet as err:
            raise NotBuiltYet(str(err)) from None
        print(f"step {result.step}: {cfg.eval.split.replace('_', '-')} win rate {result.win_rate:.3f} (95% CI +-{result.ci95:.3f}), exact {result.exact:.2f}; "
              + ", ".join(f"vs {k} {v:.3f}" for k, v in result.per_opponent.items()))
    return 0


def _eval_benchmarks(cfg: RunConfig, args: argparse.Namespace) -> int:
    from pathlib import Path

    from megatron_elo.harness.questions import BenchmarkFileError
    from megatron_elo.harness.report import format_table
    from megatron_elo.harness.run import run_benchmarks, selected_benchmarks

    try:
        selected_benchmarks(cfg, args.benchmark)
        results, speed = run_benchmarks(cfg, args.benchmark, checkpoints=args.checkpoint, models=parse_models(args.models))
    except BenchmarkFileError as err:
        raise ConfigError([str(err)]) from None
    for result in results:
        print(format_table(result) + "\n")
    judged = sum(r.judge.get("judged", 0.0) for r in results)
    per_s = [r.judge["judged_per_s"] for r in results if r.judge.get("judged")]
    print(f"answers generated: {speed['answers_per_s']:.2f} prompts/s; judge: {judged:.0f} prompts judged"
          + (f", {sum(per_s) / len(per_s):.2f} judge prompts/s (a pairwise game is two)" if per_s
             else " (all from the judgment store)"))
    print(f"reports: {Path(cfg.output_dir) / cfg.run_name / 'eval'}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    """Start node N's dedicated opponent / judge servers and keep them up until stopped (SIGTERM, Ctrl-C)."""
    import logging
    import signal
    import time
    from pathlib import Path

    from megatron_elo.rollout.launch import node_engines, serve_node
    from megatron_elo.rollout.served import ServerError

    cfg = load_and_validate(args.config, args.overrides)
    if not node_engines(cfg, args.node):
        raise ConfigError([f"serve --node {args.node}: no dedicated engine (opponent or judge) without a server_url is "
                           f"placed on node {args.node}; check their engine.node"])
    log_dir = Path(cfg.output_dir) / "engine_logs" / f"node{args.node}"
    signal.signal(signal.SIGTERM, _interrupt)  # the batch system's stop: shut the servers down cleanly
    servers = []
    try:
        servers = serve_node(cfg, args.node, log_dir=log_dir)
        for name, server in servers:
            print(f"{name}: serving on port {server.port} (devices {server.devices or 'cpu'})", flush=True)
        while True:
            dead = [name for name, server in servers if server.process.poll() is not None]
            if dead:
                raise ServerError(f"serve --node {args.node}: {', '.join(dead)} exited (logs in {log_dir})")
            time.sleep(2.0)
    except ServerError as err:
        logging.getLogger("megatron_elo").error("%s", err)
        return EXIT_SERVER
    except KeyboardInterrupt:
        return 0
    finally:
        for _, server in servers:
            server.stop()


def cmd_compare(args: argparse.Namespace) -> int:
    from megatron_elo.analysis.compare_report import format_table
    from megatron_elo.compare import compare, noise_line, parse_methods, write_and_log

    if args.seeds < 1 or args.jobs < 1:
        raise ConfigError([f"--seeds and --jobs: must be >= 1, got {args.seeds} and {args.jobs}"])
    cfg = load_and_validate(args.config, args.overrides)
    try:
        methods = parse_methods(args.methods, tuple(o.name for o in cfg.opponents))
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    results, start, target = compare(cfg, args.config, args.overrides, seeds=args.seeds, target=args.target,
                                     methods=methods, jobs=args.jobs)
    table = format_table(results, start=start, target=target) + "\n\n" + noise_line(cfg)
    print(table)
    print(f"written to {write_and_log(cfg, results, table)}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from megatron_elo.models.convert import hf_to_megatron_dir, megatron_dir_to_hf

    if (args.source_format, args.target_format) == ("hf", "megatron"):
        out = hf_to_megatron_dir(args.src, args.dst, tp=args.tp, pp=args.pp, pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of)
    elif (args.source_format, args.target_format) == ("megatron", "hf"):
        out = megatron_dir_to_hf(args.src, args.dst)
    else:
        raise ConfigError([f"convert: --from {args.source_format} --to {args.target_format} is not a conversion; use hf->megatron or megatron->hf"])
    print(f"wrote {out}")
    return 0


BENCHES = (  # (target, module with add_arguments(parser) and run(args), help, description)
    ("kernels", "kernels.benchmark", "fused loss-side kernels vs torch / compile / Liger / CCE",
     "Forward+backward time and peak extra memory of each loss-side kernel beside its peers and its floor "
     "(see kernels/benchmark.py)."),
    ("reshard", "megatron_elo.rollout.benchmark", "Megatron -> vLLM weight sync: time, bytes moved, vs a plain copy",
     "One full weight sync per trainer -> engine layout, ours (local slices) beside the gather-everything way "
     "(see megatron_elo/rollout/benchmark.py)."),
    ("trainer", "megatron_elo.trainer.benchmark", "train step: tokens/s, step time, MFU, peak memory",
     "The policy train step on random weights and tokens, per loss-side setting (see megatron_elo/trainer/benchmark.py)."),
    ("judge", "megatron_elo.judges.benchmark", "log-prob verdicts: one generated token vs scoring each choice",
     "The LLM judge's log-prob verdicts read from one decoding step's top log-probs beside three full prompt "
     "log-prob passes, on one in-process engine (see megatron_elo/judges/benchmark.py)."),
    ("harness", "megatron_elo.harness.benchmark", "evaluation harness: batched answers and judging vs one prompt per call",
     "A candidate answering benchmark questions and a judge judging them on in-process engines, batched as "
     "`eval --benchmark` does beside one request per call (see megatron_elo/harness/benchmark.py)."),
    ("loop", "megatron_elo.runner.benchmark", "seconds per step with and without rollout.overlap_judging",
     "Two short training runs of the config with a served tiny LLM judge and served opponents, overlap off and on "
     "(see megatron_elo/runner/benchmark.py)."),
)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for ``megatron-elo`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="megatron-elo", description="Elo-Evolve RL training on megatron-core + vLLM.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,serve,bench,convert,compare}")

    def add_config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="YAML config, e.g. configs/tiny_cpu.yaml")
        p.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. trainer.lr=2e-6")

    raw = argparse.RawDescriptionHelpFormatter
    train = sub.add_parser("train", help="train a policy (the main job)", formatter_class=raw, epilog=CONFIG_HELP,
                           description="Train a policy from a YAML config with dotted overrides.")
    add_config_args(train)
    train.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and the process layout, and exit")
    train.add_argument("--no-check-paths", action="store_true",
                       help="with --dry-run: check the layout without the model / data files on this machine (uses the YAML's arch)")
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("eval", help="held-out win rate of checkpoints, or benchmarks (AlpacaEval / MT-Bench / "
                                           "Arena-Hard style) with the LLM judge", formatter_class=raw, epilog=CONFIG_HELP)
    add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", nargs="+", default=[], help="checkpoint directories (default: the newest in "
                                                                      "the run's output_dir, else model.path)")
    evaluate.add_argument("--benchmark", action="append", default=[], help="a benchmark of eval.benchmarks (repeatable; "
                                                                           "'all': every one); without it: the held-out win rate")
    evaluate.add_argument("--models", nargs="+", default=[], metavar="NAME=PATH",
                          help="HF model directories evaluated beside the checkpoints (with --benchmark)")
    evaluate.set_defaults(handler=cmd_eval)

    bench = sub.add_parser("bench", help="benchmarks that print a table (kernels, trainer, reshard, loop)")
    bench_targets = bench.add_subparsers(dest="target", required=True, metavar="{kernels,trainer,reshard,loop}")
    for target, module, summary, description in BENCHES:
        bench_parser = bench_targets.add_parser(target, help=summary, formatter_class=raw, description=description)
        benchmark = import_module(module)
        benchmark.add_arguments(bench_parser)
        bench_parser.set_defaults(handler=benchmark.run)

    convert = sub.add_parser("convert", help="convert checkpoints between HF safetensors and the Megatron layout")
    convert.add_argument("--from", dest="source_format", choices=["hf", "megatron"], required=True)
    convert.add_argument("--to", dest="target_format", choices=["hf", "megatron"], required=True)
    convert.add_argument("src", help="source checkpoint directory")
    convert.add_argument("dst", help="destination directory (must not exist)")
    convert.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (to megatron)")
    convert.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size (to megatron)")
    convert.add_argument("--pad-vocab-to-multiple-of", type=int, default=128,
                         help="pad the embedding so vocab divides by this times TP (to megatron)")
    convert.set_defaults(handler=cmd_convert)

    serve = sub.add_parser("serve", help="start one node's dedicated opponent / judge servers (SLURM does it per engine node)",
                           formatter_class=raw, epilog=CONFIG_HELP,
                           description="Start every dedicated engine placed on --node as an OpenAI-compatible vLLM server "
                                       "on its engine.port and keep them up; the run finds them through "
                                       "MEGATRON_ELO_ENGINE_HOSTS (see launch/slurm.sbatch).")
    add_config_args(serve)
    serve.add_argument("--node", type=int, required=True, help="this node's index in the allocation (trainer nodes first)")
    serve.set_defaults(handler=cmd_serve)

    compare = sub.add_parser("compare", help="run point, static pairwise, Elo-Evolve (and pair losses) on one budget and seeds",
                             formatter_class=raw, epilog=CONFIG_HELP)
    add_config_args(compare)
    compare.add_argument("--seeds", type=int, default=3, help="seeds per method (seed, seed+1, ...)")
    compare.add_argument("--methods", default="point,static_pairwise,elo_evolve",
                         help="comma-separated: point, static_pairwise, elo_evolve, the pair losses dpo, ipo, simpo, "
                              "orpo, sppo, inpo (pairs_online with the config's algorithm.pairs) and the recipes eva, "
                              "tsr, evolve (with the config's algorithm.eva / tsr / evolve); variants: "
                              "static_pairwise:<opponent> (static_pairwise:all: one per opponent), "
                              "elo_evolve:<rating_update> and elo_evolve:T<selection temperature>, chainable "
                              "(elo_evolve:anchored:T50)")
    compare.add_argument("--jobs", type=int, default=1,
                         help="child runs at a time (each a `train` process; on a CPU machine one per core or two)")
    compare.add_argument("--target", type=float, default=None,
                         help="win rate for 'steps to target' (default: the starting win rate + 0.05)")
    compare.set_defaults(handler=cmd_compare)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, with KEY=VALUE overrides allowed anywhere after the config (argparse alone stops
    collecting positionals at the first option: ``compare CONFIG --seeds 1 trainer.lr=1e-6``)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in token and not token.startswith("-") for token in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``megatron-elo`` console script; returns the exit code."""
    log = setup_logging(rank=int(os.environ.get("RANK", "0")))
    args = parse_args(build_parser(), argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        log.error(str(err))
        return EXIT_BAD_CONFIG
    except NotBuiltYet as err:
        log.error("not built yet: %s", err)
        return EXIT_NOT_BUILT
    except DriverTimeout as err:
        log.error("%s", err)
        return EXIT_TIMEOUT
    except EngineStopped as err:
        log.error("%s", err)
        return EXIT_ENGINE_DOWN
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        log.error("%s", err)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
