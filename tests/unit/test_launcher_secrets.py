"""The Kubernetes launcher's Jobs carry no credential: no cluster, no Docker, only the manifest it would submit.

A login written into the tracking URI (on the command line or in the config), or a secret in the submitter's
environment, must not reach the Job: a Job's spec is readable by anyone who may list Jobs in the namespace, and
it stays there for a week (ttlSecondsAfterFinished). The pods take their login from the Secret the template
references instead.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.yolov5_mlflow_sweepers.kubernetes_launcher import KubernetesLauncher, _Trial
from train.tracking.sweep import PARENT_RUN_ENV, TRIAL_ENV

REPO = Path(__file__).resolve().parents[2]
SERVER = "http://mlflow.example.test:5000"


def canary(name: str) -> str:
    return f"canary-{name}-{secrets.token_hex(8)}"


def with_login(uri: str, user: str, password: str) -> str:
    return uri.replace("://", f"://{user}:{password}@", 1)


def launcher(tracking_uri: str) -> KubernetesLauncher:
    made = KubernetesLauncher(backend_config=str(REPO / "k8s_backend_config.json"), project_dir=str(REPO),
                              max_parallel=2, poll_interval_s=0.1, start_timeout_s=60)
    # As if the sweep's image were already built and pushed: (project name, tag, digest).
    made._image = ("yolov5-mlflow", "registry.example.com/ml/yolov5-mlflow:test", "sha256:" + "0" * 64)
    config = OmegaConf.create({"mlflow": {"tracking_uri": tracking_uri}, "sweep": {"objective": "metrics/x"}})
    made.setup(hydra_context=None, task_function=None, config=config)
    return made


def sweep_overrides(*typed: str):
    """The trials' overrides as Hydra's sweeper hands them to a launcher: values re-rendered, `:` escaped."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [batch] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(list(typed)), None)
    return batch


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("submitter", ["as typed", "as Hydra's sweeper renders it", "KUBE_MLFLOW_TRACKING_URI"])
def test_a_trial_job_holds_no_credential(submitter, monkeypatch):
    """The URI's login (config and the trial's override), the submitter's MLflow password and a secret-named
    variable's value given in an override are all absent; the pod still gets its login from the Secret."""
    monkeypatch.chdir(REPO)  # the backend config names its Job template relative to the project
    password, env_password, s3_secret = canary("uri-password"), canary("env-password"), canary("s3-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "submitter")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env_password)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_secret)
    if submitter == "KUBE_MLFLOW_TRACKING_URI":
        # MLflow's Kubernetes backend puts this variable's value into every Job as MLFLOW_TRACKING_URI.
        monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", with_login("http://mlflow.kubeflow.svc:5000", "u", password))
    uri = with_login(SERVER, "trainer", password)
    overrides = ["debug=tiny", "hyp.lr0=0.01", f"mlflow.tracking_uri={uri}", f"+mlflow.tags.note=key-{s3_secret}"]
    if submitter == "as Hydra's sweeper renders it":
        [overrides, _] = sweep_overrides(*overrides[:-1], f"{overrides[-1]},other")
    trial = _Trial(3, overrides)

    job = launcher(uri)._job(trial, parent_run_id="0123456789abcdef")

    manifest = json.dumps(job)
    for value in (password, env_password, s3_secret):
        assert value not in manifest, f"{value} is in the Job"
    env = container(job)["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert "@" not in values["MLFLOW_TRACKING_URI"], values["MLFLOW_TRACKING_URI"]
    assert values[PARENT_RUN_ENV] == "0123456789abcdef" and values[TRIAL_ENV] == "3"
    # The trial still trains against the same server (without the login), with its own overrides.
    command = container(job)["command"]
    assert command[:3] == ["python", "-m", "train"] and "hyp.lr0=0.01" in command
    [uri_override] = [arg for arg in command if arg.startswith("mlflow.tracking_uri=")]
    assert "mlflow.example.test" in uri_override and "@" not in uri_override, uri_override
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        [entry] = [e for e in env if e["name"] == name]
        assert "value" not in entry, f"{name} is given in clear text"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "mlflow-tracking-credentials" and ref["key"] == name
