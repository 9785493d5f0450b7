# The tracking server's image: MLflow and the S3 client pinned, installed at build time, not at pod start.
# Flask-WTF is what mlflow[auth] adds: the basic-auth app (deploy/auth/) will not start without it.
#   docker build -f deploy/mlflow-server.Dockerfile -t registry.example.com/ml/mlflow-server:3.17.2 deploy/
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/mlflow \
 && /opt/mlflow/bin/pip install --no-cache-dir --disable-pip-version-check mlflow==3.17.2 boto3==1.43.11 \
      Flask-WTF==1.3.0 \
 && useradd --create-home --uid 1000 mlflow
ENV PATH=/opt/mlflow/bin:$PATH
USER mlflow
EXPOSE 5000
