# promptnucseg: CUDA image by default, CPU image with --build-arg VARIANT=cpu.
#   docker build -t promptnucseg .                       # CUDA 12.4 runtime, torch cu124
#   docker build -t promptnucseg:cpu --build-arg VARIANT=cpu .
#   docker run --gpus all -v /data/slides:/slides -v /data/out:/out promptnucseg \
#       segment /slides/case1.svs --out /out
ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG CPU_IMAGE=python:3.11-slim-bookworm

FROM ${CUDA_IMAGE} AS base-cuda
ENV TORCH_INDEX=https://download.pytorch.org/whl/cu124
# Not pinned: Ubuntu drops superseded package versions from its archive, so an exact pin
# breaks the build within months; the base image tag above is what fixes the OS.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python

FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu

# hadolint ignore=DL3006
FROM base-${VARIANT} AS final
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index that matches the variant; then the package and its deps
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.1,<2.15" "torchvision>=0.16,<0.30"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY promptnucseg ./promptnucseg
COPY models ./models
COPY wsi_pipeline ./wsi_pipeline
COPY configs ./configs
RUN pip install "./[anndata]" && promptnucseg --help >/dev/null
# A non-root user, named by number so that Kubernetes' runAsNonRoot can check it; /work is
# its working folder (mount slides and outputs elsewhere, or over it).
RUN useradd --create-home --uid 1000 --user-group nuclei \
    && mkdir /work && chown 1000:1000 /work
USER 1000:1000
WORKDIR /work
# `docker run IMAGE` with no arguments prints the help; any arguments are a promptnucseg command line
ENTRYPOINT ["promptnucseg"]
CMD ["--help"]
