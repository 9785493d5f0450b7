"""A real tracking server behind MLflow's basic-auth app, started as deploy/auth/ starts it: who gets in.

Anonymous and wrong-password requests are refused; `python -m train` with the credentials in
MLFLOW_TRACKING_USERNAME/_PASSWORD (what the training pod gets from its Secret) records a whole run.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Iterator, Optional, Tuple

import pytest

from tests.conftest import REPO, TINY, client_env, train_cli, why

Credentials = Tuple[str, str]


def call(uri: str, path: str, login: Optional[Credentials] = None, body: Optional[dict] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one REST request, with HTTP basic auth when a login is given."""
    request = urllib.request.Request(uri + path, headers=dict(headers or {}),
                                     data=None if body is None else json.dumps(body).encode())
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if login is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def client_as(monkeypatch: pytest.MonkeyPatch, login: Credentials):
    """An MlflowClient that logs in as a training process does: MLflow reads the variables at each request."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
    return MlflowClient()


def train_as(server, login: Credentials, experiment: str, cache_dir, workdir):
    """`python -m train`, one tiny epoch, with the login where the training pod's Secret puts it."""
    env = client_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME=experiment,
                     MLFLOW_TRACKING_USERNAME=login[0], MLFLOW_TRACKING_PASSWORD=login[1])
    return train_cli(workdir, cache_dir, [*TINY, "train.epochs=1"], env=env)


@pytest.fixture(scope="module")
def admin_training(auth_tracking_server, cache_dir, tmp_path_factory) -> Iterator[tuple]:
    """One tiny training as the admin: (completed process, its run, as the admin reads it)."""
    server = auth_tracking_server
    proc = train_as(server, server.admin, "e2e-auth", cache_dir, tmp_path_factory.mktemp("work"))
    assert proc.returncode == 0, why(proc)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        client = client_as(monkeypatch, server.admin)
        [run] = client.search_runs([client.get_experiment_by_name("e2e-auth").experiment_id])
        yield proc, run


def test_the_readiness_probe_needs_no_login(auth_tracking_server):
    # The kubelet probes anonymously; anything but 2xx/3xx would keep the pod unready forever.
    for path in (auth_tracking_server.readiness_path, "/health"):
        assert call(auth_tracking_server.uri, path)[0] == 200, path


def test_anonymous_requests_are_refused(auth_tracking_server):
    uri = auth_tracking_server.uri
    for path in ("/api/2.0/mlflow/experiments/search?max_results=10",
                 "/api/2.0/mlflow/experiments/get?experiment_id=0",
                 "/api/2.0/mlflow-artifacts/artifacts",  # the artifact proxy: listing the bucket's root
                 "/"):  # the UI
        status, headers, _ = call(uri, path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic"), path
    # Writes as well as reads.
    assert call(uri, "/api/2.0/mlflow/experiments/create", body={"name": "anonymous"})[0] == 401


def test_wrong_or_unknown_logins_are_refused(auth_tracking_server):
    user, password = auth_tracking_server.admin
    for login in ((user, password + "x"), (user, ""), ("nobody-here", password)):
        assert call(auth_tracking_server.uri, "/api/2.0/mlflow/experiments/search?max_results=10", login)[0] == 401


def test_the_admin_login_from_the_secret_gets_in(auth_tracking_server):
    status, _, body = call(auth_tracking_server.uri, "/api/2.0/mlflow/experiments/search?max_results=10",
                           auth_tracking_server.admin)
    assert status == 200 and "experiments" in json.loads(body)


def test_training_with_the_login_records_a_finished_run(admin_training, auth_tracking_server, monkeypatch):
    _, run = admin_training
    assert run.info.status == "FINISHED"
    assert "metrics/mAP_0.5_0.95" in run.data.metrics and run.data.params["train.epochs"] == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_tracking_server.uri)
    client = client_as(monkeypatch, auth_tracking_server.admin)
    assert "logs/train.log" in {a.path for a in client.list_artifacts(run.info.run_id, "logs")}


def test_the_runs_artifacts_are_refused_without_a_login(admin_training, auth_tracking_server):
    _, run = admin_training
    uri, login = auth_tracking_server.uri, auth_tracking_server.admin
    folder = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/logs"
    listing = "/api/2.0/mlflow-artifacts/artifacts?" + urllib.parse.urlencode({"path": folder})
    download = f"/api/2.0/mlflow-artifacts/artifacts/{folder}/train.log"
    assert call(uri, listing)[0] == 401 and call(uri, download)[0] == 401
    status, _, body = call(uri, listing, login)
    assert status == 200 and "train.log" in body.decode()
    assert call(uri, download, login)[0] == 200


def test_the_password_is_in_no_param_tag_or_output(admin_training, auth_tracking_server):
    proc, run = admin_training
    password = auth_tracking_server.admin[1]
    recorded = [*run.data.params.items(), *run.data.tags.items()]
    assert not [key for key, value in recorded if password in value]
    assert password not in proc.stdout and password not in proc.stderr


def test_the_kubernetes_pod_logs_in_with_the_secret(auth_tracking_server, base_image, project_copy, registry,
                                                   tmp_path, monkeypatch):
    """`mlflow run --backend kubernetes` with the project's Job template: MLflow passes the pod no login, the
    mlflow-tracking-credentials Secret does (kubernetes_job_template.yaml's secretKeyRef, resolved by the stand-in)."""
    from tests.e2e.conftest import cpu_job_template
    from tests.e2e.kube_standin import KubeStandIn
    from tests.e2e.test_mlflow_project import PARAMS, mlflow_run

    uri = auth_tracking_server.uri
    pod_user = ("e2e-pod", "pod-password-of-some-length")
    assert call(uri, "/api/2.0/mlflow/users/create", auth_tracking_server.admin,
                {"username": pod_user[0], "password": pod_user[1]})[0] == 200
    with KubeStandIn() as standin:
        standin.secrets["mlflow-tracking-credentials"] = {"MLFLOW_TRACKING_USERNAME": pod_user[0],
                                                          "MLFLOW_TRACKING_PASSWORD": pod_user[1]}
        # The server is the cluster's mlflow-service for the pods; the submitter reaches it as a port-forward.
        in_cluster = standin.host_service("mlflow-service", "kubeflow", 5000, int(uri.rsplit(":", 1)[1]))
        backend = tmp_path / "k8s_backend_config.json"
        backend.write_text(json.dumps({"kube-context": "standin", "repository-uri": f"{registry}/yolov5-mlflow",
                                       "kube-job-template-path": str(cpu_job_template(tmp_path))}))
        # The submitter logs in too (it creates the run); the same user, so the pod may log to it.
        kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig", context="standin")
        env = client_env(MLFLOW_TRACKING_URI=uri, KUBE_MLFLOW_TRACKING_URI=in_cluster, KUBECONFIG=str(kubeconfig),
                         MLFLOW_TRACKING_USERNAME=pod_user[0], MLFLOW_TRACKING_PASSWORD=pod_user[1])
        proc = mlflow_run(project_copy, tmp_path, env, "--backend", "kubernetes", "--backend-config", str(backend),
                          "--build-image", "--experiment-name", "e2e-auth-kubernetes", *PARAMS)
    [job] = standin.jobs.values()
    assert proc.returncode == 0 and job.exit_code == 0, why(proc) + job.logs[-3000:]
    assert pod_user[1] not in json.dumps(job.manifest)  # the Job names the Secret, never holds the password
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = client_as(monkeypatch, pod_user)
    [run] = client.search_runs([client.get_experiment_by_name("e2e-auth-kubernetes").experiment_id])
    assert run.info.status == "FINISHED" and "metrics/mAP_0.5_0.95" in run.data.metrics
