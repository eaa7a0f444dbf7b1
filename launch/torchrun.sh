#!/usr/bin/env bash
# One node, N processes (GPUs, or CPU processes over gloo).
#   launch/torchrun.sh configs/tiny_cpu.yaml [KEY=VALUE ...] [--dry-run]
#   NPROC_PER_NODE=2 launch/torchrun.sh configs/tiny_cpu.yaml cluster.devices_per_node=2 parallel.dp=2
# NPROC_PER_NODE defaults to the GPUs nvidia-smi lists (1 without GPUs).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [KEY=VALUE ...] [--dry-run]" >&2
  exit 2
fi
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ "${NPROC_PER_NODE}" -gt 0 ]] || NPROC_PER_NODE=1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
exec torchrun --standalone --nnodes=1 --nproc-per-node="${NPROC_PER_NODE}" -m megatron_elo.cli train "$@"
