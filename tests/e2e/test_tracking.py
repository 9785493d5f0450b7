"""A short training through `python -m train`, recorded in a real tracking server with S3 artifacts."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus

from tests.conftest import REPO, TINY, client_env, train_cli, training_metrics, why

EPOCHS = 3
# A checkpoint (and its logged models) every epoch, and system metrics every second: a 3-epoch run shows them all.
RICH = ["mlflow.checkpoint_every_epochs=1", "mlflow.system_metrics.sampling_interval_s=1"]
MAP = "metrics/mAP_0.5_0.95"


@pytest.fixture(scope="module")
def finished(tracking_server, cache_dir, tmp_path_factory):
    """One tiny training, shared by the assertions below: (completed process, run)."""
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-tracking")
    proc = train_cli(tmp_path_factory.mktemp("work"), cache_dir, [*TINY, f"train.epochs={EPOCHS}", *RICH,
                                                                   "+mlflow.tags.team=vision"], env=env)
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
    assert tags["hydra_overrides"].split() == [*TINY, f"train.epochs={EPOCHS}", *RICH, "+mlflow.tags.team=vision"]
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
    assert set(training_metrics(run)) == expected
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


def test_checkpoints_are_logged_models_ranked_by_their_linked_metrics(finished, tracking_server, monkeypatch):
    """Every epoch's last.pt, best.pt when it improved, and the final model: READY, each at its epoch among the run's
    outputs, that epoch's metrics linked with the validation dataset; search_logged_models ranks them by mAP."""
    _, run = finished
    client = tracking_server.client()
    models = client.search_logged_models([run.info.experiment_id], order_by=[{"field_name": f"metrics.{MAP}",
                                                                               "ascending": False}])
    assert {m.status for m in models} == {LoggedModelStatus.READY}
    names = [m.name for m in models]
    steps = {o.model_id: o.step for o in client.get_run(run.info.run_id).outputs.model_outputs}
    # A snapshot waiting while another uploads is replaced by the next (newest only): on a busy machine not every
    # epoch gets one; each one uploaded is one last-checkpoint at its own epoch.
    last_steps = [steps[m.model_id] for m in models if m.name == "last-checkpoint"]
    assert last_steps and len(set(last_steps)) == len(last_steps) and set(last_steps) <= set(range(EPOCHS))
    assert names.count("model") == 1 and "best-checkpoint" in names
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, MAP)}
    [validation] = [i.dataset for i in client.get_run(run.info.run_id).inputs.dataset_inputs
                    if i.tags[0].value == "validation"]
    for model in models:
        [linked] = [m for m in model.metrics if m.key == MAP]
        assert linked.step == steps[model.model_id] and linked.value == history[linked.step], model.name
        assert (linked.dataset_name, linked.dataset_digest) == (validation.name, validation.digest), model.name
        assert not any(m.key.startswith("system/") for m in model.metrics), model.name  # the epoch's, not sampled
    assert models[0].metrics and max(history.values()) == [m.value for m in models[0].metrics if m.key == MAP][0]
    # The history holds each epoch once: linking re-sent the same points.
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, MAP)) == list(range(EPOCHS))
    [checkpoint] = [m for m in models if m.name == "last-checkpoint" and steps[m.model_id] == max(last_steps)]
    [final] = [m for m in models if m.name == "model"]
    assert final.params["train.epochs"] == str(EPOCHS)  # the run's params, as MLflow's Model.log copies them
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    info = mlflow.models.get_model_info(f"models:/{checkpoint.model_id}")  # a pyfunc model, as the final one
    assert "python_function" in info.flavors and info.signature.inputs.input_names() == ["image"]
    assert info.saved_input_example_info is None  # the final model alone carries the example
    assert mlflow.models.get_model_info(f"models:/{final.model_id}").saved_input_example_info


def test_system_metrics_are_mlflows_own_series(finished, tracking_server):
    _, run = finished
    system = {key for key in run.data.metrics if key.startswith("system/")}
    for series in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage",
                   "network_receive_megabytes"):
        assert f"system/{series}" in system, system
    assert not any("gpu" in key for key in system)  # no NVML here: no GPU series, and no error either


def test_plots_are_images_and_the_final_validation_is_tables(finished, tracking_server, tmp_path):
    _, run = finished
    client = tracking_server.client()
    images = {item.path.split("/")[1].split("+")[0] for item in client.list_artifacts(run.info.run_id, "images")}
    for key in ("labels", "labels_correlogram", "train_batch0", "PR_curve", "confusion_matrix", "results",
                "val_batch0_pred"):
        assert key in images, images
    assert run.data.tags["mlflow.loggedImages"] == "True"  # as MLflow writes it
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "per_class_metrics.json",
                                                      str(tmp_path))).read_text())
    assert table["columns"] == ["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]
    assert [row[0] for row in table["data"]] == ["all", "circle", "square", "triangle"]
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "per_class_metrics.json", "type": "table"}, {"path": "confusion_matrix.json", "type": "table"}]
