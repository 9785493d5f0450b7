"""Where a training is recorded: an existing run (as `mlflow run` hands over), or the embedded default."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.conftest import TINY, client_env, why


def test_logs_into_the_run_named_by_mlflow_run_id(train, tracking_server):
    client = tracking_server.client()
    experiment_id = client.create_experiment("e2e-existing-run")
    existing = client.create_run(experiment_id, run_name="made-by-mlflow-run")
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_RUN_ID=existing.info.run_id,
                     MLFLOW_EXPERIMENT_ID=experiment_id)
    proc = train(*TINY, "train.epochs=1", env=env)
    assert proc.returncode == 0, why(proc)
    [run] = client.search_runs([experiment_id])
    assert run.info.run_id == existing.info.run_id and run.info.run_name == "made-by-mlflow-run"
    assert run.info.status == "FINISHED"
    assert "metrics/mAP_0.5_0.95" in run.data.metrics and run.data.params["epochs"] == "1"
    assert client.get_experiment_by_name("yolov5-synthetic-demo") is None  # no stray default experiment


def test_embedded_default_tracks_to_sqlite_in_the_working_folder(train, tmp_path):
    from mlflow import MlflowClient

    proc = train(*TINY, "train.epochs=1", env=client_env())  # no MLFLOW_* at all
    assert proc.returncode == 0, why(proc)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The printed command works as printed: its mlflow is this environment's, whether or not it is activated.
    [command] = [line.removeprefix("Open it with: ") for line in proc.stdout.splitlines()
                 if line.startswith("Open it with: ")]
    executable, *args = command.split()
    assert args == ["ui", "--backend-store-uri", uri, "--port", "5000"]
    assert shutil.which(executable, path=client_env()["PATH"]) == str(Path(sys.executable).parent / "mlflow")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("yolov5-synthetic-demo")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert f"MLflow run {run.info.run_id} ended FINISHED" in proc.stdout
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(tmp_path)
    assert (artifacts / "logs" / "train.log").is_file()
    assert (artifacts / "training-output" / "weights" / "best.pt").is_file()
