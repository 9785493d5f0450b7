"""Every Kubernetes manifest the project ships, and every Job it submits, is valid on each supported Kubernetes
minor and means the same there: its schema is checked per minor, and the fields it uses are GA in the oldest."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

REPO = Path(__file__).resolve().parents[2]
# The Kubernetes minors a user's cluster may run, every one checked against its own schema. Widen the range here
# and nowhere else; kubernetes-validate (requirements-dev.txt) must ship the newest one's schema.
SUPPORTED_KUBERNETES = ("1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
OLDEST_KUBERNETES = SUPPORTED_KUBERNETES[0]
DEPLOY = REPO / "deploy"
KUSTOMIZATION = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
AUTH = DEPLOY / "auth"
AUTH_COMPONENT = yaml.safe_load((AUTH / "kustomization.yaml").read_text())
AUTH_RESOURCES = [AUTH / name for name in AUTH_COMPONENT["resources"]]  # deploy/auth/'s Secret templates
JOB_TEMPLATE = REPO / "kubernetes_job_template.yaml"
MANIFESTS = [JOB_TEMPLATE, *(DEPLOY / name for name in KUSTOMIZATION["resources"]), *AUTH_RESOURCES]
IN_CLUSTER_TRACKING_URI = "http://mlflow-service.kubeflow.svc.cluster.local:5000"
IMAGE_TAG, IMAGE_DIGEST = "reg/x:tag", "sha256:" + "0123456789abcdef" * 4  # as pushed: MLflow runs it by digest


def minor(version: str) -> tuple:
    return tuple(int(part) for part in version.split("."))


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(doc: dict, version: str) -> None:
    # strict: unknown fields are errors too. kubernetes-validate falls back to the newest schema it has at or
    # below the version asked for: the one it used must be the one asked for.
    used = kubernetes_validate.validate(doc, version, strict=True)
    assert used == version, f"validated against Kubernetes {used}'s schema, not {version}'s"


def test_every_supported_kubernetes_minor_has_its_schema():
    shipped = {major_minor(version) for version in all_versions()}
    missing = [version for version in SUPPORTED_KUBERNETES if version not in shipped]
    assert not missing, f"kubernetes-validate {kubernetes_validate.__version__} has no schema for {missing}"
    minors = [minor(version) for version in SUPPORTED_KUBERNETES]
    assert minors == [(1, m) for m in range(minors[0][1], minors[-1][1] + 1)], "every minor, none skipped"


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_validates(path, version):
    for doc in documents(path):
        validate(doc, version)


@pytest.fixture(scope="module")
def mlflow_job(tmp_path_factory) -> dict:
    """The Job `mlflow run . --backend kubernetes -P epochs=50 -P overrides=...` submits, made as MLflow's
    run_kubernetes_job makes it: the entry point's command and the run's env from MLflow's own functions, then
    its _get_kubernetes_job_definition (train/tracking/mlflow_internals.py), with a pushed image's tag and digest."""
    from mlflow.projects.kubernetes import _get_run_command
    from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

    from train.tracking.mlflow_internals import kubernetes_job_definition, load_project

    project = load_project(str(REPO))
    params = {"epochs": "50", "overrides": "hyp.lr0=0.005 '+mlflow.tags.note=two words'"}
    command = get_entry_point_command(project, "main", params, str(tmp_path_factory.mktemp("storage")))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.test:5000")  # the submitter's
        env.setenv("KUBE_MLFLOW_TRACKING_URI", IN_CLUSTER_TRACKING_URI)  # the pods': MLflow puts it in the Job
        run_env = get_run_env_vars(run_id="ab" * 16, experiment_id="1")
        job = kubernetes_job_definition(project.name, IMAGE_TAG, IMAGE_DIGEST, _get_run_command(command), run_env,
                                        yaml.safe_load(JOB_TEMPLATE.read_text()))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{IMAGE_TAG}@{IMAGE_DIGEST}" and container["command"][:3] == [
        "python", "-m", "train.mlproject"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": IN_CLUSTER_TRACKING_URI} in container["env"]
    return job


@pytest.fixture(scope="module")
def launcher_jobs() -> list:
    """The Jobs the sweep's Kubernetes launcher submits for two trials (as tests/unit/test_launcher_secrets.py
    makes them: the image as if already built and pushed, no cluster)."""
    from omegaconf import OmegaConf

    from hydra_plugins.yolov5_mlflow_sweepers.kubernetes_launcher import KubernetesLauncher, _Trial

    with pytest.MonkeyPatch.context() as env:
        env.chdir(REPO)
        env.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
        launcher = KubernetesLauncher(backend_config=str(REPO / "k8s_backend_config.json"), project_dir=str(REPO),
                                      max_parallel=2, poll_interval_s=0.1, start_timeout_s=60)
        launcher._image = ("yolov5-mlflow", IMAGE_TAG, IMAGE_DIGEST)
        launcher.setup(hydra_context=None, task_function=None, config=OmegaConf.create(
            {"mlflow": {"tracking_uri": IN_CLUSTER_TRACKING_URI}, "sweep": {"objective": "metrics/mAP_0.5"}}))
        trials = [_Trial(0, ["model=yolov5n", "hyp.lr0=0.01"]), _Trial(1, ["model=yolov5s", "hyp.lr0=0.001"])]
        jobs = [launcher._job(trial, parent_run_id="cd" * 16) for trial in trials]
    assert all(job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE_TAG}@{IMAGE_DIGEST}"
               for job in jobs)
    return jobs


@pytest.fixture(scope="module")
def deploy() -> list:
    """The objects `kubectl apply -k deploy/` sends."""
    return kustomize(DEPLOY)


RENDERED = {  # fixture: what it holds
    "mlflow_job": "the Job template as `mlflow run --backend kubernetes` fills it in",
    "launcher_jobs": "the sweep launcher's Jobs",
    "deploy": "deploy/ as kustomize renders it",
    "deploy_with_auth": "deploy/ with the auth component, its patch applied",
}


def rendered(request, name: str) -> list:
    objects = request.getfixturevalue(name)
    return objects if isinstance(objects, list) else [objects]


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("name", RENDERED)
def test_what_is_submitted_validates(request, name, version):
    for obj in rendered(request, name):
        validate(obj, version)


# Every JobSpec field, and the release its feature went GA (on in every cluster; before that, alpha is off by
# default and beta can be turned off, and the API server then drops the field or the controller ignores it: the
# same Job would mean something else there). A Job may use only fields GA in OLDEST_KUBERNETES.
# None: GA in no supported minor.
JOB_SPEC_FIELD_GA = {
    "template": "1.2", "parallelism": "1.2", "completions": "1.2",  # batch/v1 Job
    "activeDeadlineSeconds": "1.2", "selector": "1.2", "manualSelector": "1.2",
    "backoffLimit": "1.8",
    "ttlSecondsAfterFinished": "1.23",  # TTLAfterFinished
    "suspend": "1.24",  # SuspendJob
    "completionMode": "1.24",  # IndexedJob
    "podFailurePolicy": "1.31",  # JobPodFailurePolicy
    "successPolicy": "1.33",  # JobSuccessPolicy (beta in 1.31)
    "backoffLimitPerIndex": "1.33", "maxFailedIndexes": "1.33",  # JobBackoffLimitPerIndex (beta in 1.31)
    "podReplacementPolicy": "1.34",  # JobPodReplacementPolicy (beta in 1.31)
    "managedBy": "1.35",  # JobManagedBy (alpha in 1.31)
    "scheduling": None,  # alpha in 1.37
}
POD_FAILURE_ACTION_GA = {"FailJob": "1.31", "Ignore": "1.31", "Count": "1.31",  # JobPodFailurePolicy
                         "FailIndex": "1.33"}  # JobBackoffLimitPerIndex
POD_CONDITION_GA = {"DisruptionTarget": "1.31"}  # PodDisruptionConditions: evictions and preemptions set it


def schemas(version: str):
    """The folder of kubernetes-validate's strict schemas for a minor."""
    return resources.files(kubernetes_validate) / "kubernetes-json-schema" / f"v{version}.0-local-strict"


def definitions(version: str) -> dict:
    return json.loads((schemas(version) / "_definitions.json").read_text())["$defs"]


def test_the_job_field_table_knows_every_field_of_every_supported_minor():
    for version in SUPPORTED_KUBERNETES:
        fields = set(definitions(version)["io.k8s.api.batch.v1.JobSpec"]["properties"])
        assert fields <= set(JOB_SPEC_FIELD_GA), f"{version}: add {fields - set(JOB_SPEC_FIELD_GA)} with its GA"


def is_ga(table: dict, name: str) -> bool:
    return table.get(name) is not None and minor(table[name]) <= minor(OLDEST_KUBERNETES)


def test_jobs_use_only_what_is_ga_in_the_oldest_supported_minor(request):
    jobs = {"kubernetes_job_template.yaml": documents(JOB_TEMPLATE)[0]}
    jobs["mlflow run"] = request.getfixturevalue("mlflow_job")
    jobs.update((f"sweep trial {i}", job) for i, job in enumerate(rendered(request, "launcher_jobs")))
    jobs.update((f"deploy/ Job {o['metadata']['name']}", o) for o in rendered(request, "deploy") if o["kind"] == "Job")
    why = (f"not GA in Kubernetes {OLDEST_KUBERNETES}, the oldest supported minor: a cluster there may have its "
           f"feature off and then drops or ignores it, so the Job would not mean the same on every supported minor")
    for where, job in jobs.items():
        for field in job["spec"]:
            assert is_ga(JOB_SPEC_FIELD_GA, field), f"{where}: spec.{field} is {why}"
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
            assert is_ga(POD_FAILURE_ACTION_GA, rule["action"]), f"{where}: action {rule['action']} is {why}"
            for pattern in rule.get("onPodConditions", []):
                assert is_ga(POD_CONDITION_GA, pattern["type"]), f"{where}: condition {pattern['type']} is {why}"
                # The schema requires it up to 1.34 (optional from 1.35, "True" by default): explicit, never defaulted.
                assert pattern.get("status") == "True", f"{where}: onPodConditions {pattern} needs status: \"True\""


# Fields the oldest supported minor's own API reference calls alpha, beta or feature-gated, that a manifest may use
# anyway, and why that is safe.
GATED_BUT_REVIEWED = {
    "Job.spec.podFailurePolicy.rules[].action": "only FailIndex is beta in 1.31: the values are pinned above",
}


def fields_used(value, schema: dict, defs: dict, path: str):
    """(path, the schema's description) of every field `value` sets, walking `schema`."""
    while "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[1]], "description": schema.get("description", "")}
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            field = schema["properties"][key]
            yield f"{path}.{key}", field.get("description") or ""
            yield from fields_used(item, field, defs, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            yield from fields_used(item, schema["items"], defs, f"{path}[]")


def test_no_object_uses_a_field_gated_in_the_oldest_supported_minor(request):
    """A tripwire for the Pod, Deployment, Service and volume fields beyond the Job's own: the oldest minor's
    API reference marks a field that is not GA there (a beta field in Probe, PodSpec, a PVC...)."""
    defs = definitions(OLDEST_KUBERNETES)
    objects = [doc for path in MANIFESTS for doc in documents(path)]
    objects += [obj for name in RENDERED for obj in rendered(request, name)]
    for obj in objects:
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
        schema = json.loads((schemas(OLDEST_KUBERNETES) / f"{obj['kind'].lower()}-{group_version}.json").read_text())
        for path, description in fields_used(obj, schema, defs, obj["kind"]):
            gated = re.search(r"\b(alpha|beta)\b|feature gate", description, re.IGNORECASE)
            assert not gated or path in GATED_BUT_REVIEWED, (
                f"{obj['kind']}/{obj['metadata']['name']}: {path} is {gated.group(0)} in Kubernetes "
                f"{OLDEST_KUBERNETES} ({description.strip()[:300]})")


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


def test_kustomize_renders_deploy_into_objects_in_kubeflow(deploy):
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in deploy)
    assert kinds == ["Deployment/minio", "Deployment/mlflow", "Job/minio-create-bucket",
                     "PersistentVolumeClaim/minio-data", "PersistentVolumeClaim/mlflow-db",
                     "Secret/minio-credentials", "Service/minio-service", "Service/mlflow-service"]
    assert all(obj["metadata"]["namespace"] == "kubeflow" for obj in deploy)  # valid: test_what_is_submitted_...
    mlflow = next(o for o in deploy if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
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


def test_auth_component_renders_objects_in_kubeflow(deploy_with_auth):
    kinds = {f"{o['kind']}/{o['metadata']['name']}" for o in deploy_with_auth}
    assert {"Secret/mlflow-auth", "Secret/mlflow-tracking-credentials"} <= kinds
    assert any(kind.startswith("ConfigMap/mlflow-auth-config-") for kind in kinds)  # name hashed: restarts on change
    assert all(obj["metadata"]["namespace"] == "kubeflow" for obj in deploy_with_auth)  # validated per minor above


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
