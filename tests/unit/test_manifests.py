"""Every Kubernetes manifest the project ships validates against the official schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.latest_version()
DEPLOY = REPO / "deploy"
KUSTOMIZATION = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
MANIFESTS = [REPO / "kubernetes_job_template.yaml", *(DEPLOY / name for name in KUSTOMIZATION["resources"])]


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # strict: unknown fields are errors too


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_validates(path):
    for doc in documents(path):
        validate(doc)


def test_kustomization_resources_exist_and_land_in_kubeflow():
    assert KUSTOMIZATION["namespace"] == "kubeflow"
    for name in KUSTOMIZATION["resources"]:
        assert (DEPLOY / name).is_file(), name


def test_job_template_has_what_a_training_pod_needs():
    [job] = documents(REPO / "kubernetes_job_template.yaml")
    assert job["metadata"]["namespace"] == "kubeflow"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["backoffLimit"] >= 1 and spec["ttlSecondsAfterFinished"] > 0
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 120
    [container] = pod["containers"]
    for bound in ("requests", "limits"):
        resources = container["resources"][bound]
        assert resources["nvidia.com/gpu"] == 1 and "cpu" in resources and "memory" in resources
    shm = {v["name"]: v for v in pod["volumes"]}[
        {m["mountPath"]: m for m in container["volumeMounts"]}["/dev/shm"]["name"]]
    assert shm["emptyDir"]["medium"] == "Memory"


def test_backend_config_names_the_template():
    config = json.loads((REPO / "k8s_backend_config.json").read_text())
    assert set(config) == {"kube-context", "repository-uri", "kube-job-template-path"}
    assert (REPO / config["kube-job-template-path"]).is_file()


def test_tracking_server_allows_its_service_names_and_probes_the_api():
    deployment = next(d for d in documents(DEPLOY / "mlflow.yaml") if d["kind"] == "Deployment")
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"] if "=" in a)
    allowed = args["allowed-hosts"].split(",")
    for host in ("mlflow-service", "mlflow-service.kubeflow.svc.cluster.local", "localhost", "127.0.0.1"):
        assert f"{host}:*" in allowed
    assert args["artifacts-destination"] == "s3://mlflow" and "--serve-artifacts" in server["args"]
    assert args["backend-store-uri"].startswith("sqlite:////") and server["volumeMounts"]
    probe = server["readinessProbe"]["httpGet"]
    assert probe["path"].startswith("/api/") and probe["httpHeaders"][0]["value"].startswith("mlflow-service.")


def test_server_image_pins_the_projects_mlflow():
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    dockerfile = (DEPLOY / "mlflow-server.Dockerfile").read_text()
    assert f"mlflow=={pins['mlflow']}" in dockerfile and f"boto3=={pins['boto3']}" in dockerfile
    assert KUSTOMIZATION["images"][0]["newTag"] == pins["mlflow"]


def test_secret_is_a_template():
    [secret] = documents(DEPLOY / "credentials-secret.yaml")
    assert all(value.startswith("replace-with-") for value in secret["stringData"].values())


def test_dockerfile_python_matches_conda_yaml():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python="))
    base = re.search(r"ARG BASE_IMAGE=python:(\d+\.\d+)", (REPO / "Dockerfile").read_text()).group(1)
    assert python == f"python={base}"
    pip_section = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert pip_section == ["-r requirements.txt", "-c requirements.lock"]  # one pinned list, not two


def test_kustomize_renders_deploy_into_valid_objects_in_kubeflow():
    """What `kubectl apply -k deploy/` would send, rendered by kubectl's own kustomize, without a cluster."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    rendered = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert kinds == ["Deployment/minio", "Deployment/mlflow", "Job/minio-create-bucket",
                     "PersistentVolumeClaim/minio-data", "PersistentVolumeClaim/mlflow-db",
                     "Secret/minio-credentials", "Service/minio-service", "Service/mlflow-service"]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "kubeflow"
        validate(obj)
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/ml/mlflow-server:3.17.2"
