"""Every Kubernetes manifest the project ships validates against the official schema."""

from __future__ import annotations

import configparser
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
AUTH = DEPLOY / "auth"
AUTH_COMPONENT = yaml.safe_load((AUTH / "kustomization.yaml").read_text())
AUTH_RESOURCES = [AUTH / name for name in AUTH_COMPONENT["resources"]]  # deploy/auth/'s Secret templates
MANIFESTS = [REPO / "kubernetes_job_template.yaml", *(DEPLOY / name for name in KUSTOMIZATION["resources"]),
             *AUTH_RESOURCES]


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


@pytest.mark.parametrize("path", [DEPLOY / "credentials-secret.yaml", *AUTH_RESOURCES],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_secret_is_a_template(path):
    [secret] = documents(path)
    assert secret["kind"] == "Secret"
    # The in-cluster MinIO address is no secret: the training Jobs read it from here with the keys.
    endpoint = secret["stringData"].pop("MLFLOW_S3_ENDPOINT_URL", None)
    assert all(value.startswith("replace-with-") for value in secret["stringData"].values())
    if endpoint is not None:
        assert endpoint == "http://minio-service.kubeflow.svc.cluster.local:9000"


def test_dockerfile_python_matches_conda_yaml():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python="))
    base = re.search(r"ARG BASE_IMAGE=python:(\d+\.\d+)", (REPO / "Dockerfile").read_text()).group(1)
    assert python == f"python={base}"
    pip_section = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert pip_section == ["-r requirements.txt", "-c requirements.lock"]  # one pinned list, not two


def kustomize(folder: Path) -> list:
    """The objects `kubectl apply -k folder` would send, rendered by kubectl's own kustomize (no cluster)."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    rendered = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_kustomize_renders_deploy_into_valid_objects_in_kubeflow():
    objects = kustomize(DEPLOY)
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert kinds == ["Deployment/minio", "Deployment/mlflow", "Job/minio-create-bucket",
                     "PersistentVolumeClaim/minio-data", "PersistentVolumeClaim/mlflow-db",
                     "Secret/minio-credentials", "Service/minio-service", "Service/mlflow-service"]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "kubeflow"
        validate(obj)
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/ml/mlflow-server:3.17.2"


def test_job_template_logs_in_from_an_optional_secret():
    [job] = documents(REPO / "kubernetes_job_template.yaml")
    env = {v["name"]: v for v in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    [tracking_secret] = documents(AUTH / "tracking-credentials-secret.yaml")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == tracking_secret["metadata"]["name"] and ref["key"] in tracking_secret["stringData"]
        assert ref["optional"] is True  # pods still start where the server has no auth and no such Secret


@pytest.fixture(scope="module")
def deploy_with_auth(tmp_path_factory) -> list:
    """deploy/ rendered as a user turns auth on: the commented `components` entry uncommented."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    text = (copy / "kustomization.yaml").read_text()
    assert "# components:\n#   - auth\n" in text  # the switch kustomization.yaml tells the user about
    (copy / "kustomization.yaml").write_text(text.replace("# components:\n#   - auth\n", "components:\n  - auth\n"))
    return kustomize(copy)


def test_auth_component_renders_valid_objects_in_kubeflow(deploy_with_auth):
    kinds = {f"{o['kind']}/{o['metadata']['name']}" for o in deploy_with_auth}
    assert {"Secret/mlflow-auth", "Secret/mlflow-tracking-credentials"} <= kinds
    assert any(kind.startswith("ConfigMap/mlflow-auth-config-") for kind in kinds)  # name hashed: restarts on change
    for obj in deploy_with_auth:
        assert obj["metadata"]["namespace"] == "kubeflow"
        validate(obj)


def test_auth_component_turns_on_basic_auth_with_credentials_from_a_secret(deploy_with_auth):
    import mlflow.environment_variables as mlflow_env

    mlflow = next(o for o in deploy_with_auth if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    pod = mlflow["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert "--app-name=basic-auth" in server["args"] and "--serve-artifacts" in server["args"]  # the rest kept
    # The Secret's keys become the server's environment, and each is a variable MLflow reads.
    assert {"secretRef": {"name": "mlflow-auth"}} in server["envFrom"]
    assert {"secretRef": {"name": "minio-credentials"}} in server["envFrom"]
    [secret] = documents(AUTH / "auth-secret.yaml")
    assert set(secret["stringData"]) == {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                         "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    assert all(hasattr(mlflow_env, key) for key in secret["stringData"])
    # The ini MLFLOW_AUTH_CONFIG_PATH names is the ConfigMap's, and its auth database is on the runs' volume.
    env = {v["name"]: v.get("value") for v in server["env"]}
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert str(config.parent) == mounts["auth-config"]
    volume = {v["name"]: v for v in pod["volumes"]}["auth-config"]
    configmap = next(o for o in deploy_with_auth if o["kind"] == "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] and config.name in configmap["data"]
    ini = configparser.ConfigParser()
    ini.read_string(configmap["data"][config.name])
    database = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    assert Path(database).parent == Path(mounts["db"])
    assert not {"admin_username", "admin_password"} & set(ini["mlflow"])  # credentials only in the Secret
    assert ini["mlflow"]["default_permission"] == "READ"


def test_auth_readiness_probe_asks_the_api_route_auth_leaves_open(deploy_with_auth):
    # That it answers an anonymous request: tests/e2e/test_auth.py, on a real server.
    mlflow = next(o for o in deploy_with_auth if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    [server] = mlflow["spec"]["template"]["spec"]["containers"]
    probe = server["readinessProbe"]["httpGet"]
    assert probe["path"] == "/api/3.0/mlflow/server-info"
    assert probe["httpHeaders"][0]["value"].startswith("mlflow-service.")  # still checks --allowed-hosts
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"


def test_server_image_has_what_the_auth_app_needs():
    # mlflow[auth]'s one extra: without it `mlflow server --app-name basic-auth` exits at start.
    assert "Flask-WTF==" in (DEPLOY / "mlflow-server.Dockerfile").read_text()
