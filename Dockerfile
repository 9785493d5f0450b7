# The project's base image, named by MLproject's docker_env: CUDA-capable PyTorch in the conda.yaml environment.
#
#   docker build -t <registry>/yolov5-mlflow-base:<tag> .
#   docker push <registry>/yolov5-mlflow-base:<tag>       (then set docker_env.image in MLproject to it)
#
# PyPI's torch wheels carry their own CUDA runtime (the nvidia-* packages), so a slim Python base is CUDA-capable
# on any host with an NVIDIA driver and the NVIDIA container toolkit (`mlflow run . -A gpus=all`, or a Kubernetes
# node with the NVIDIA device plugin). BASE_IMAGE must provide the Python that conda.yaml names.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# OpenCV, which YOLOv5 imports, needs libGL and GLib.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

# The environment is conda.yaml's pip section, installed into a virtual environment of the base's Python.
COPY conda.yaml requirements.txt requirements.lock /opt/env/
RUN sed -n 's/^ *- \(-[rc] .*\)$/\1/p' /opt/env/conda.yaml > /opt/env/pip-section.txt \
 && python3 -m venv /opt/env/venv \
 && cd /opt/env && venv/bin/pip install --no-cache-dir --disable-pip-version-check -r pip-section.txt

# Runs as an unprivileged user; datasets, YOLOv5's config dir and Hydra's outputs live in its home, since the
# project code that `mlflow run` copies in (/mlflow/projects/code) belongs to root. No credentials are baked in:
# the tracking URI and any secrets come from the environment at run time.
RUN useradd --create-home --uid 1000 trainer
USER trainer
ENV PATH=/opt/env/venv/bin:$PATH \
    YOLOV5_MLFLOW_CACHE=/home/trainer/.cache/yolov5-mlflow \
    YOLOV5_MLFLOW_OUTPUTS=/home/trainer/outputs \
    GIT_PYTHON_REFRESH=quiet \
    PYTHONUNBUFFERED=1
WORKDIR /home/trainer
