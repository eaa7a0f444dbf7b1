#!/usr/bin/env bash
# Every GPU-only check and benchmark of the open issues, for one lent GPU machine (H100/H200) without
# network, vLLM or megatron-core: bring megatron-core, Liger and cut-cross-entropy as wheels.
#
#   make gpu-wheels                          # here, once: downloads them into .whl/ (git-ignored, ~3.5 MB)
#   launch/gpu_checks.sh kernels             # on the GPU machine (device tool: carry [".whl"])
#   launch/gpu_checks.sh trainer
#   launch/gpu_checks.sh trainer-bench
#   launch/gpu_checks.sh pairs-bench
#   launch/gpu_checks.sh reshard
#
# Each part fits one 10-minute device call and writes its tables and logs under $OUT (default
# ./gpu_results), so a part that fails or times out still leaves what the earlier steps wrote:
#   kernels  the GPU tests of tests/test_kernels.py (fp32 against the references on CUDA, bf16 at real
#            shapes), then `bench kernels` at the Qwen2.5-7B shapes of issue #3;
#   trainer  the GPU tests of tests/test_te_spec.py (transformer-engine's layer spec loads the local
#            spec's weights under the fused-norm names and computes the same logits; weight sync sees
#            the same HF weights) and of tests/test_trainer.py (a train step on CUDA equals the CPU step;
#            megatron-core's DDP + optimizer, plain and distributed, take the torch optimizer's step and
#            resume exactly);
#   trainer-bench  `bench trainer` for the Qwen2.5-1.5B shape, bf16: 4 x 2048 with each loss side (torch
#            optimizer), and 8 x 2048 with the fused kernels on each optimizer (issue #5's target: it fits);
#   pairs-bench  `bench trainer --loss grpo dpo` for the same shape: 8 x 2048 rows (DPO: 4 pairs) per step,
#            each loss side, GRPO's rows beside (issue #16);
#   reshard  `bench reshard --engine none` (Megatron side; the machine has no vLLM) for the
#            Qwen2.5-1.5B shape (issue #6).
set -uo pipefail
part=${1:?usage: $0 kernels|trainer|trainer-bench|pairs-bench|reshard}
cd "$(dirname "$0")/.."
out=${OUT:-gpu_results}
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "no .whl/: run 'make gpu-wheels' on a machine with network and carry .whl" >&2
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.csv" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee "$out/versions.txt"

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log under $out, keep going on failure
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $?" | tee -a "$out/status.txt"
  tail -n 30 "$out/$name.log"
}

case "$part" in
  kernels)
    step pytest_kernels 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py
    step bench_kernels 330 python3 -m megatron_elo.cli bench kernels --out "$out/bench_kernels.md"
    ;;
  trainer)
    step pytest_te_spec 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_te_spec.py
    step pytest_trainer 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_trainer.py
    ;;
  trainer-bench)
    common=(--shape qwen2.5-1.5b --seq 2048 --device cuda --dtype bf16 --steps 5 --warmup 2)
    step bench_trainer_b4 240 python3 -m megatron_elo.cli bench trainer "${common[@]}" --batch 4 --kernels torch triton \
      --optimizer torch --out "$out/bench_trainer_b4.md"
    step bench_trainer_b8 300 python3 -m megatron_elo.cli bench trainer "${common[@]}" --batch 8 --kernels triton \
      --optimizer megatron_core torch --distributed-optimizer --out "$out/bench_trainer_b8.md"
    ;;
  pairs-bench)
    common=(--shape qwen2.5-1.5b --seq 2048 --device cuda --dtype bf16 --steps 5 --warmup 2 --batch 8 --micro-batch 2)
    step bench_trainer_pairs 540 python3 -m megatron_elo.cli bench trainer "${common[@]}" --loss grpo dpo \
      --kernels torch triton --optimizer torch --out "$out/bench_trainer_pairs.md"
    ;;
  reshard)
    step bench_reshard 540 python3 -m megatron_elo.cli bench reshard --engine none --device cuda --dtype bf16 --world 1 \
      --hidden 1536 --ffn 8960 --layers 28 --heads 12 --kv-heads 2 --vocab 151936 --out "$out/bench_reshard.md"
    ;;
  *)
    echo "unknown part $part: kernels, trainer, trainer-bench, pairs-bench or reshard" >&2
    exit 2
    ;;
esac
cat "$out/status.txt"
! grep -qv ": exit 0$" "$out/status.txt"
