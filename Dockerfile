# RunPod serverless GPU worker: Parakeet-TDT (NeMo) speech-to-text, batch jobs and real-time WebSocket sessions.
#
#   docker build -t parakeet-worker .                                                  # model resolved at start
#   docker build -t parakeet-worker --build-arg MODEL_ID=nvidia/parakeet-tdt-0.6b-v3 .  # model baked into /models
#
# CUDA: torch 2.13.0 (pinned in requirements.txt) ships CUDA 12.6, 13.0 (the PyPI default) and 13.2 builds. The
# default here is the cu126 build on a CUDA 12.6 base: it runs on every RunPod host whose driver reports CUDA
# >= 12.6 and on Turing/Ampere/Ada/Hopper GPUs. Blackwell GPUs (RTX 5090, RTX PRO 6000, B200) need the cu130
# build, which needs hosts with CUDA >= 13.0 drivers (see docs/DEPLOY.md, "CUDA"):
#
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#     --build-arg "CUDA_BINDINGS=cuda-bindings>=13.0.3,<14" -t parakeet-worker:cu130 .
#
# The base is the small `-base-` flavour on purpose: torch's CUDA wheels carry their own CUDA runtime, cuBLAS
# and cuDNN (nvidia-* packages, found through torch's RPATH), so a `-cudnn-runtime-` base would add over a gigabyte
# of libraries that nothing loads. The base still provides what the NVIDIA container runtime needs (driver
# mounts, NVIDIA_* variables) and its `cuda>=12.6` requirement, which refuses a too-old host driver at once.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# NeMo needs cuda-bindings (unpinned); keep its major version on the CUDA line of torch and of the base image.
ARG CUDA_BINDINGS="cuda-bindings>=12.6,<13"
# A Hugging Face id to bake into /models at build time (empty: resolve at start-up, see below).
ARG MODEL_ID=""
ARG MODEL_REVISION=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ffmpeg decodes what libsndfile cannot (AAC/M4A, WebM and other containers); libsndfile1 backs soundfile.
# Ubuntu 24.04 brings Python 3.12 (the test venv uses 3.11; every pinned package supports both).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ffmpeg libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# DL3008 (pin apt versions) is ignored on purpose: the base image tag pins the Ubuntu release, and Ubuntu
# replaces exact package versions with each security update, which would break every rebuild.

WORKDIR /app

# Dependencies first, so code changes rebuild only the last layers. torch comes from the CUDA wheel index that
# matches the base image; `-r requirements.txt` then finds torch==2.13.0 satisfied and keeps that build.
# silero-vad is installed without its dependencies: they pull torchaudio, which has no build for this torch;
# the worker only needs its ONNX model file, run by onnxruntime from requirements.txt
# (parakeet_worker/streaming/vad.py).
COPY requirements.txt ./
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "$(grep -E '^torch==' requirements.txt)" \
    && pip install --no-cache-dir -r requirements.txt "${CUDA_BINDINGS}" \
    && pip install --no-cache-dir --no-deps silero-vad==6.2.0 \
    && python -c "import torch, nemo.collections.asr, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Model weights. With MODEL_ID the .nemo is fetched now into /models/<org>--<name>/ and PARAKEET_MODEL names it;
# without it the worker looks, in order, at RunPod cached models (/runpod-volume/huggingface-cache/hub),
# /models and the network volume (/runpod-volume/models), then downloads from the Hugging Face hub.
ENV PARAKEET_MODEL_DIR=/models \
    PARAKEET_MODEL=${MODEL_ID}
COPY scripts/bake_model.py scripts/bake_model.py
RUN if [ -n "${MODEL_ID}" ]; then python scripts/bake_model.py "${MODEL_ID}" /models --revision "${MODEL_REVISION}"; fi

COPY . .

# The WebSocket server for real-time sessions (PARAKEET_WS_PORT) and the Riva gRPC face (PARAKEET_GRPC_PORT); expose
# them on the endpoint as 8765/tcp and 50051/tcp.
EXPOSE 8765 50051

# Runs as root: RunPod mounts network volumes (/runpod-volume) owned by root, and a non-root user could not
# write caches or logs there.
CMD ["python", "-u", "rp_handler.py"]
