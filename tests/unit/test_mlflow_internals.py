"""The private MLflow APIs train/tracking/mlflow_internals.py wraps still exist and behave as it relies on."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow
import yaml

from train.tracking import mlflow_internals

REPO = Path(__file__).resolve().parents[2]


def test_pinned_mlflow_is_the_one_checked():
    assert importlib.metadata.version("mlflow") == mlflow_internals.CHECKED_WITH


def test_forget_active_run_drops_it_without_ending_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.start_run()
    mlflow_internals.forget_active_run()
    assert mlflow.active_run() is None
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"


def test_project_and_job_definition_as_mlflow_run_makes_them():
    project = mlflow_internals.load_project(str(REPO))
    assert project.name == "yolov5-mlflow" and project.docker_env["image"]
    template = yaml.safe_load((REPO / "kubernetes_job_template.yaml").read_text())
    job = mlflow_internals.kubernetes_job_definition(project.name, "registry/x:tag", "sha256:abc",
                                                     ["python", "-m", "train"], {"A": "1"}, template)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"].startswith("yolov5-mlflow-")
    assert container["image"] == "registry/x:tag@sha256:abc" and container["command"] == ["python", "-m", "train"]
    assert {"name": "A", "value": "1"} in container["env"]
