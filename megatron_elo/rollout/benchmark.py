"""``megatron-elo bench reshard``: one full Megatron -> vLLM weight sync, timed, per layout.

    megatron-elo bench reshard                                   # CPU: 2 gloo ranks, tiny Qwen2 shape, real vLLM
    megatron-elo bench reshard --engine none --device cuda \\
        --hidden 1536 --ffn 8960 --layers 28 --heads 12 --kv-heads 2 --vocab 151936 --world 1   # GPU: Megatron side

For each (trainer layout -> engine layout) it runs the sync twice in the same processes: ours
(local slices where the layouts allow) and the peers' way (every TP shard all-gathered), and prints
per rank: seconds per sync, bytes received, the largest HF-shaped tensor in flight (the stream's
peak extra memory, one weight), and the ratio to a plain copy of the same bytes (``torch.clone`` of
every weight the engine loads). ``--engine none`` consumes the stream into preallocated HF-shaped
buffers instead of a vLLM engine (the GPU machine has no vLLM).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from megatron_elo.config.schema import ArchConfig, EngineConfig, TrainerConfig
from megatron_elo.rollout.weight_sync import SyncStats

LAYOUTS = {  # name: (trainer tp, pp, dp), (engine tp, dp)
    "tp2->tp2": ((2, 1, 1), (2, 1)),
    "tp2->tp1xdp2": ((2, 1, 1), (1, 2)),
    "pp2->tp2": ((1, 2, 1), (2, 1)),
    "tp1->tp1": ((1, 1, 1), (1, 1)),
}


@dataclass(frozen=True, kw_only=True)
class ReshardRow:
    """One measured (layout, method) pair, worst rank."""

    layout: str
    method: str
    sync_ms: float
    copy_ms: float
    received_mb: float
    largest_mb: float
    hf_mb: float
    local_weights: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench reshard`` options."""
    parser.add_argument("--layouts", nargs="+", default=None, choices=sorted(LAYOUTS),
                        help="trainer->engine layouts (default: all that fit --world)")
    parser.add_argument("--world", type=int, default=2, help="processes (CPU: gloo ranks)")
    parser.add_argument("--engine", choices=["vllm", "none"], default="vllm", help="none: Megatron side only, into buffers")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=1408)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")


def _arch(args: argparse.Namespace) -> ArchConfig:
    return ArchConfig(family="qwen2", num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                      num_attention_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                      vocab_size=args.vocab, max_position_embeddings=256, tie_word_embeddings=False)


@dataclass(frozen=True, kw_only=True)
class RankSync:
    """One rank's measurement of one method."""

    method: str
    sync_s: float  # median seconds per sync
    copy_s: float  # median seconds to clone the same bytes
    stats: SyncStats  # what the last sync moved


class _BufferSink:
    """Stands in for the engine (``--engine none``): copies every streamed tensor into its own
    HF-shaped buffer, as a loader would (buffers are allocated by the warm-up sync)."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def load_weights(self, stream) -> None:
        for name, tensor in stream:
            self.buffers.setdefault(name, torch.empty_like(tensor)).copy_(tensor)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reshard_session(rank: int, world: int, model_dir: str, layout: str, args: argparse.Namespace) -> list[RankSync]:
    """On every rank: build trainer and engine, time ``repeats`` syncs per method (after one warm-up)."""
    import torch.distributed as dist

    from megatron_elo.parallel.layout import ParallelLayout
    from megatron_elo.rollout.weight_sync import EngineShard, hf_weight_stream
    from megatron_elo.trainer.build import build_policy_trainer

    (tp, pp, dp), (engine_tp, engine_dp) = LAYOUTS[layout]
    device = args.device
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    trainer = build_policy_trainer(model_dir, ParallelLayout(tp=tp, pp=pp, dp=dp), TrainerConfig(precision=args.dtype),
                                   total_steps=1, dtype=args.dtype, device=device, frozen=True)  # weights only: no optimizer
    if args.engine == "vllm":
        from megatron_elo.rollout.engine import RolloutEngine

        engine = RolloutEngine(model_dir, EngineConfig(tp=engine_tp, dp=engine_dp, gpu_memory_utilization=0.2, max_model_len=128),
                               seed=0, dtype=args.dtype, distributed=world > 1)
        shard = engine.shard()
    else:
        shard = EngineShard.colocated(engine_tp=engine_tp, rank=rank)
        engine = _BufferSink()
    methods = (("ours: local slices", True), ("peers: gather all", False))
    times: dict[str, list[float]] = {m: [] for m, _ in methods}
    stats: dict[str, SyncStats] = {}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up; the methods alternate so drift hits both
        for method, local_slices in methods:
            stats[method] = SyncStats()
            dist.barrier()
            _synchronize(device)
            start = time.perf_counter()
            engine.load_weights(hf_weight_stream(trainer.model, trainer.groups, trainer.arch, engine=shard,
                                                 stats=stats[method], local_slices=local_slices))
            _synchronize(device)
            if repeat:
                times[method].append(time.perf_counter() - start)
    copy_times = []
    weights = [p.detach() for p in trainer.model.parameters()]
    scale = stats[methods[0][0]].hf_bytes / max(sum(w.nbytes for w in weights), 1)
    for _ in range(args.repeats):
        _synchronize(device)
        start = time.perf_counter()
        copies = [w.clone() for w in weights]
        _synchronize(device)
        copy_times.append((time.perf_counter() - start) * scale)  # scaled to the bytes the engine loads
        del copies
    return [RankSync(method=m, sync_s=statistics.median(times[m]), copy_s=statistics.median(copy_times), stats=stats[m])
            for m, _ in methods]


def _worst_rank(layout: str, per_rank: list[list[RankSync]]) -> list[ReshardRow]:
    out = []
    for i, first in enumerate(per_rank[0]):
        ranks = [rows[i] for rows in per_rank]
        stats = [r.stats for r in ranks]
        mb = 2**20
        out.append(ReshardRow(layout=layout, method=first.method, sync_ms=1e3 * max(r.sync_s for r in ranks),
                              copy_ms=1e3 * max(r.copy_s for r in ranks),
                              received_mb=max(s.received_bytes for s in stats) / mb,
                              largest_mb=max(s.largest_bytes for s in stats) / mb, hf_mb=max(s.hf_bytes for s in stats) / mb,
                              local_weights=f"{min(s.local_weights for s in stats)}/{stats[0].weights}"))
    return out


def format_table(rows: list[ReshardRow], header: str) -> str:
    """Markdown table of the measured rows."""
    lines = [header, "",
             "| trainer -> engine | method | sync ms | copy ms | sync / copy | MB received per rank | largest tensor MB | MB loaded | weights without TP comm |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.layout} | {r.method} | {r.sync_ms:.1f} | {r.copy_ms:.1f} | {r.sync_ms / max(r.copy_ms, 1e-9):.1f}x "
                     f"| {r.received_mb:.1f} | {r.largest_mb:.1f} | {r.hf_mb:.1f} | {r.local_weights} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Make the model, measure every layout, print (and optionally write) the table."""
    from megatron_elo.models.tiny import make_tiny_hf_model
    from megatron_elo.parallel.spawn import run_distributed
    from megatron_elo.utils.logging import progress_bar
    from megatron_elo.utils.report import device_label, emit_table

    layouts = args.layouts or [name for name, (t, e) in LAYOUTS.items() if t[0] * t[1] * t[2] == args.world]
    bad = [n for n in layouts if LAYOUTS[n][0][0] * LAYOUTS[n][0][1] * LAYOUTS[n][0][2] != args.world]
    if bad:
        raise SystemExit(f"--layouts {bad} need a different --world than {args.world}")
    arch = _arch(args)
    backend = "nccl" if args.device == "cuda" else "gloo"  # one process per GPU there
    rows: list[ReshardRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-reshard-") as tmp:
        model_dir = str(make_tiny_hf_model(arch, f"{tmp}/hf", seed=0))
        with progress_bar(total=len(layouts), description="bench reshard", enabled=True) as bar:
            for layout in layouts:
                per_rank = run_distributed(reshard_session, args.world, model_dir, layout, args, timeout=1800, backend=backend)
                rows += _worst_rank(layout, per_rank)
                bar.advance()
    header = (f"{time.strftime('%Y-%m-%d')} · {device_label(args.device, backend)} · torch {torch.__version__} · engine {args.engine} · "
              f"{args.dtype} · Qwen2 shape L={arch.num_layers} H={arch.hidden_size} F={arch.ffn_hidden_size} "
              f"heads={arch.num_attention_heads}/{arch.num_kv_heads} V={arch.vocab_size} · median of {args.repeats} · worst rank")
    emit_table(format_table(rows, header), args.out)
    return 0
