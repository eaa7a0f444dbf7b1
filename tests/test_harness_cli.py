"""`megatron-elo eval --benchmark` end to end on tiny real vLLM engines: a candidate policy, a second
model (--models), the rival as Arena-Hard's baseline player, a tiny judge in its own engine. Every
benchmark writes its report and metrics, prints its speeds; a rerun generates and judges nothing
again (everything from the stores) and reports the same numbers."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from megatron_elo.parallel.spawn import run_distributed

pytest.importorskip("vllm")
pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "bench"
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def _config(tmp_path: Path) -> Path:
    import yaml

    from megatron_elo.config.loader import read_yaml
    from megatron_elo.config.schema import ArchConfig
    from megatron_elo.models.tiny import make_tiny_hf_model, make_tiny_tokenizer

    arch = ArchConfig(family="qwen2", num_layers=1, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                      num_kv_heads=2, head_dim=64, vocab_size=320, max_position_embeddings=2048, tie_word_embeddings=True)
    for name, seed in (("policy", 1), ("rival", 2), ("other", 3), ("judge", 4)):
        make_tiny_hf_model(arch, tmp_path / name, seed=seed, init_std=0.3)
        make_tiny_tokenizer(tmp_path / name)
    raw = read_yaml(TINY)
    engine = {**raw["rollout"]["engine"], "max_model_len": 2048}
    raw.update(output_dir=str(tmp_path / "runs"), prepare=None, run_name="bench",
               tracking={"backend": "mlflow", "experiment": "bench"})
    raw["model"] = {"path": str(tmp_path / "policy"), "dtype": "fp32"}
    raw["rollout"]["engine"] = engine
    raw["opponents"] = [{"name": "rival", "model": {"path": str(tmp_path / "rival"), "dtype": "fp32"},
                         "engine": {**engine, "placement": "colocated", "launch": "in_process"}, "max_new_tokens": 8}]
    raw["algorithm"] = {"name": "static_pairwise", "static_opponent": "rival"}
    raw["judge"] = {"kind": "llm", "model": {"path": str(tmp_path / "judge"), "dtype": "fp32"}, "max_new_tokens": 6,
                    "engine": {**engine, "placement": "colocated", "launch": "in_process"}}
    raw["data"] = {"format": "jsonl", "train_path": str(DATA / "mt_bench_question.jsonl"), "prompt_field": "turns",
                   "eval_path": str(DATA / "mt_bench_question.jsonl")}
    raw["eval"] = {"num_prompts": 0, "benchmarks": [
        {"name": "alpaca", "kind": "pairwise_vs_reference", "path": str(DATA / "alpaca_eval.json"), "max_new_tokens": 8,
         "bootstrap_rounds": 20},
        {"name": "mt", "kind": "single_grade", "path": str(DATA / "mt_bench_question.jsonl"), "max_new_tokens": 8},
        {"name": "arena", "kind": "pairwise_vs_baseline", "path": str(DATA / "arena_hard_question.jsonl"),
         "baseline_player": "rival", "max_new_tokens": 8, "bootstrap_rounds": 20}]}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _eval_twice(rank, world_size, config_file, other):
    from megatron_elo.cli import main

    printed = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["eval", str(config_file), "--benchmark", "all", "--models", f"other={other}"])
        printed.append((code, out.getvalue()))
    return printed


def test_eval_runs_every_benchmark_on_real_engines_and_a_rerun_reuses_the_stores(tmp_path):
    from mlflow.tracking import MlflowClient

    config_file = _config(tmp_path)
    (first_code, first), (second_code, second) = run_distributed(_eval_twice, 1, config_file, str(tmp_path / "other"),
                                                                 timeout=900)[0]
    assert first_code == 0 and second_code == 0
    assert "prompts/s" in first and "judge prompts/s" in first and "all from the judgment store" in second
    out = tmp_path / "runs" / "bench" / "eval"
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in ("alpaca", "mt", "arena")}
    assert [r["model"] for r in reports["alpaca"]["rows"]] == ["policy", "other"]
    assert {r["model"] for r in reports["arena"]["rows"]} == {"rival", "policy", "other"}
    # a random tiny judge rarely writes a verdict: every reply is counted, valid or not
    alpaca = reports["alpaca"]["rows"][0]["counts"]
    assert alpaca["questions"] + alpaca["invalid"] == 3
    mt = reports["mt"]["rows"][0]["counts"]
    assert mt["graded"] + mt["invalid"] == 5  # 2 + 2 + 1 turns
    assert "judge: 30 prompts judged" in first  # alpaca 2 models x 3 x 2 orders, mt 2 x 5 turns, arena 2 x 2 x 2
    assert reports["mt"]["judge"]["cached"] == 10 and reports["alpaca"]["judge"]["judged"] == 0  # the rerun's reports
    for name in ("alpaca", "mt", "arena"):
        assert (out / name / "report.md").is_file()
    assert "### alpaca (pairwise_vs_reference)" in second
    def rows(printed):
        return [line for line in printed.splitlines() if line.startswith("| ")]

    assert rows(first) == rows(second) and len(rows(first)) == 3 + 3 + 4  # the same leaderboards (header + a row per model)
    client = MlflowClient(f"sqlite:///{(tmp_path / 'runs').resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert len(runs) == 2 and "bench/alpaca/policy/invalid" in runs[0].data.metrics


def _train_then_eval(rank, world_size, cfg, config_file):
    from megatron_elo.cli import main
    from megatron_elo.runner.runner import Runner

    summary = Runner(cfg).run()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", str(config_file), "--benchmark", "alpaca"])  # the run's newest checkpoint
    return summary, code, out.getvalue()


def test_training_evaluates_on_a_benchmark_when_eval_benchmark_names_one(tmp_path):
    """eval.benchmark=alpaca: the run's evaluations answer the benchmark's questions on the policy's own
    engine and a served judge (always [[A]]: a position bias, so both orders give a tie) decides them:
    the win rate is exactly 0.5 before and after, and each evaluation writes its report; `eval
    --benchmark` then scores the final checkpoint the same way."""
    import threading

    import transformers
    import yaml

    from megatron_elo.config.loader import config_from_dict
    from megatron_elo.config.validate import validate
    from megatron_elo.parallel.spawn import free_port
    from tests.fake_openai_server import make_server

    raw = yaml.safe_load(_config(tmp_path).read_text())
    (tmp_path / "train.jsonl").write_text("".join(f'{{"id": "t{i}", "prompt": "Say {i}."}}\n' for i in range(8)))
    raw["data"] = {"format": "jsonl", "train_path": str(tmp_path / "train.jsonl"), "eval_path": str(tmp_path / "train.jsonl")}
    port = free_port()
    server = make_server(port, reply="[[A]]", tokenizer=transformers.AutoTokenizer.from_pretrained(str(tmp_path / "judge")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    raw["judge"]["engine"] = {**raw["judge"]["engine"], "server_url": f"http://127.0.0.1:{port}", "launch": "server"}
    raw["rollout"].update(prompts_per_step=4, n_per_prompt=2, max_new_tokens=4, max_prompt_tokens=256)
    raw["trainer"].update(steps=2, global_batch_size=8, micro_batch_size=8)
    raw["eval"].update(num_prompts=4, every_steps=2, benchmark="alpaca")
    raw["checkpoint"] = {"every_steps": 0, "export_hf": False}
    raw["tracking"] = {"backend": "none"}
    config_file = tmp_path / "trained.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    try:
        summary, code, printed = run_distributed(_train_then_eval, 1, validate(config_from_dict(raw)), config_file,
                                                 timeout=900)[0]
    finally:
        server.shutdown()
    # `eval --benchmark` of the final checkpoint: exported to HF, answered with the policy's tokenizer, judged
    assert code == 0 and "| step_00000002 | 2 | 0.500 [0.500, 0.500] | 0.500 [" in printed
    assert summary["win_rate_before"] == 0.5 and summary["win_rate_after"] == 0.5
    out = tmp_path / "runs" / "bench" / "eval" / "alpaca"
    for step in (0, 2):
        report = json.loads((out / f"step_{step:08d}" / "report.json").read_text())
        assert report["rows"][0]["counts"] == {"questions": 3, "invalid": 0, "wins": 0, "ties": 3}
