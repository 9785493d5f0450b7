"""A short training through `python -m train`, recorded in a real tracking server with S3 artifacts."""

from __future__ import annotations

import csv
import io
import subprocess

import pytest

from tests.conftest import REPO, TINY, client_env, train_cli, why

EPOCHS = 3


@pytest.fixture(scope="module")
def finished(tracking_server, cache_dir, tmp_path_factory):
    """One tiny training, shared by the assertions below: (completed process, run)."""
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-tracking")
    proc = train_cli(tmp_path_factory.mktemp("work"), cache_dir,
                     [*TINY, f"train.epochs={EPOCHS}", "+mlflow.tags.team=vision"], env=env)
    assert proc.returncode == 0, why(proc)
    client = tracking_server.client()
    experiment = client.get_experiment_by_name("e2e-tracking")
    [run] = client.search_runs([experiment.experiment_id])
    return proc, run


def test_run_finished_with_contract_tags(finished):
    _, run = finished
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("yolov5n-synthetic-")  # <model>-<data>-<UTC time>
    tags = run.data.tags
    assert tags["project"] == "yolov5-mlflow"
    assert tags["team"] == "vision"  # extra tags from config
    assert tags["dataset"] == "synthetic"
    assert tags["weights"] == "none (trained from scratch)"
    assert tags["device"] == "cpu"
    assert tags["gpu_available"] == "false"
    assert tags["hydra_overrides"].split() == [*TINY, f"train.epochs={EPOCHS}", "+mlflow.tags.team=vision"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head


def test_params_hold_resolved_config_and_wrapper_names(finished):
    _, run = finished
    params = run.data.params
    assert params["train.epochs"] == str(EPOCHS) and params["epochs"] == str(EPOCHS)
    assert params["train.imgsz"] == "64" and params["imgsz"] == "64"
    assert params["train.batch"] == "8" and params["batch"] == "8"
    assert params["dataset"] == params["data.name"] == "synthetic"
    assert params["weights"] == params["model.weights"] == ""
    assert params["device"] == params["train.device"] == ""
    assert params["hyp.lr0"] == "0.002" and params["train.optimizer"] == "AdamW"
    assert params["model.name"] == "yolov5n"
    assert params["mlflow.experiment_name"] == "e2e-tracking"


def test_every_results_column_logged_once_per_epoch(finished, tracking_server):
    _, run = finished
    client = tracking_server.client()
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/training-output/results.csv"
    body = tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()
    header = [cell.strip() for cell in next(csv.reader(io.StringIO(body)))][1:]
    assert "metrics/mAP_0.5:0.95" in header and len(header) == 13 + 2 * 3  # 3 classes, per-class columns
    expected = {name.replace(":", "_") for name in header}
    assert set(run.data.metrics) == expected
    assert "metrics/mAP_0.5_0.95" in run.data.metrics
    for name in expected:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(EPOCHS)), name


def test_logged_values_match_results_csv(finished, tracking_server):
    _, run = finished
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/training-output/results.csv"
    body = tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(body))]
    column = rows[0].index("metrics/mAP_0.5")
    history = tracking_server.client().get_metric_history(run.info.run_id, "metrics/mAP_0.5")
    by_step = {m.step: m.value for m in history}
    for row in rows[1:]:
        assert by_step[int(row[0])] == pytest.approx(float(row[column]), rel=1e-4, abs=1e-5)


def test_artifacts_in_the_bucket(finished, tracking_server):
    _, run = finished
    prefix = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/"
    keys = set(tracking_server.bucket_keys(prefix))
    for path in ("logs/train.log", "training-output/weights/best.pt", "training-output/weights/last.pt",
                 "training-output/results.csv", "training-output/results.png", "config/config.yaml",
                 "config/hydra/overrides.yaml"):
        assert prefix + path in keys, path


def test_train_log_is_the_console(finished, tracking_server):
    proc, run = finished
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/logs/train.log"
    log = tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()
    assert f"{EPOCHS} epochs completed" in log
    assert "Validating" in log and "Results saved to" in log
    # What the console showed (stderr: YOLOv5's logger and progress bars) is in the log, in order.
    assert f"{EPOCHS} epochs completed" in proc.stderr


def test_console_says_where_to_look(finished, tracking_server):
    proc, run = finished
    url = f"{tracking_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"MLflow run {run.info.run_id} ended FINISHED: {url}" in proc.stdout
