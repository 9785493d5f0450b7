"""Opening, describing and closing the MLflow run that records one training.

The run is a context manager whose exit decides the end state: FINISHED when the body returns,
KILLED on an interrupt, FAILED on anything else. Nothing of ours leaves a run RUNNING.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import mlflow
from mlflow.entities import RunInfo, RunStatus

from train.tracking.names import flatten

EMBEDDED_DB = "mlflow.db"


def embedded_tracking_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / EMBEDDED_DB).resolve()}"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI (already folded into the config), else a local SQLite file."""
    return configured or embedded_tracking_uri(Path.cwd())


def legacy_params(config: Mapping[str, Any]) -> Dict[str, str]:
    """The flat names train_wrapper.py logged; dashboards and queries still use them."""
    return {
        "epochs": str(config["train"]["epochs"]),
        "imgsz": str(config["train"]["imgsz"]),
        "batch": str(config["train"]["batch"]),
        "dataset": config["data"]["name"],
        "weights": config["model"]["weights"],
        "device": config["train"]["device"],
    }


def all_params(config: Mapping[str, Any]) -> Dict[str, str]:
    return {**flatten(config), **legacy_params(config)}


def experiment_id_for(client: mlflow.MlflowClient, experiment_name: str, tags: Mapping[str, str]) -> str:
    """A sweep trial's parent's experiment; else the named one, created on first use."""
    parent = tags.get("mlflow.parentRunId")
    if parent:
        return client.get_run(parent).info.experiment_id
    experiment = client.get_experiment_by_name(experiment_name)
    return experiment.experiment_id if experiment else client.create_experiment(experiment_name)


@contextmanager
def active_run(tracking_uri: str, experiment_name: str, run_name: str,
               tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """A new run, or the one named by MLFLOW_RUN_ID (as `mlflow run` and Kubernetes Jobs set it)."""
    mlflow.set_tracking_uri(tracking_uri)
    existing = os.environ.get("MLFLOW_RUN_ID")
    if not existing:
        mlflow.set_experiment(experiment_id=experiment_id_for(mlflow.MlflowClient(), experiment_name, tags))
    run = mlflow.start_run(run_id=existing or None, run_name=None if existing else run_name, tags=dict(tags))
    try:
        yield run
    except BaseException as exc:
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        mlflow.end_run(RunStatus.to_string(status))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def run_url(tracking_uri: str, info: RunInfo) -> str:
    """Where the run shows in the UI: the server's own, or the one `mlflow ui` serves by default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{info.experiment_id}/runs/{info.run_id}"


def record_refused_run(tracking_uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> None:
    """A FAILED run that only says why it never started (a sweep trial refused for bad input)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(experiment_id_for(client, experiment_name, tags), run_name=run_name, tags=dict(tags))
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
