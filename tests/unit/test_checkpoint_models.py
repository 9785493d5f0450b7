"""Checkpoints as logged models (train/tracking/checkpoint_models.py) through the real uploader, spool and record,
on a real MLflow store (SQLite, local artifacts): READY only when complete, the epoch's metric points linked with
the validation dataset and never duplicated in the run's history, the best found by search_logged_models."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import DatasetInput, InputTag, LoggedModelStatus

from tests.unit.test_checkpoints import Run, quick_retries, wait_for  # noqa: F401 - quick_retries is a fixture
from train.tracking.checkpoint_models import BEST, LAST, CheckpointModels
from train.tracking.checkpoints import Transport
from train.tracking.record import RunRecord
from train.tracking.spool import MetricSpool

MAP = "metrics/mAP_0_5_0_95"


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("checkpoints", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    dataset = MetaDataset(HTTPDatasetSource("https://example.com/data"), name="synthetic", digest="val123")
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context",
                                                                                      "validation")])])
    return uri, client, experiment_id, run_id


def uploader_for(run: Run, store, transport_wrapper=None):
    uri, client, experiment_id, run_id = store
    record = RunRecord(client, run_id)
    spool = MetricSpool(uri, run_id)
    transport = Transport(record, CheckpointModels(record, experiment_id, 64, spool.points))
    if transport_wrapper:
        transport = transport_wrapper(transport)
    return spool, transport, run.uploader(transport), run_id


def epoch_end(run: Run, spool: MetricSpool, uploader, epoch: int, fitness: float, best_so_far: float) -> None:
    spool.put(epoch, {MAP: fitness, "train/box_loss": 1.0 / (epoch + 1)})
    run.epoch(epoch, best=fitness == best_so_far)
    uploader.on_model_save(run.save_dir / "weights" / "last.pt", epoch, False, best_so_far, fitness)


def test_each_snapshot_logs_ready_models_at_their_epoch_with_that_epochs_metrics_linked(tmp_path, store):
    uri, client, experiment_id, _ = store
    run = Run(tmp_path / "run")
    spool, _, uploader, run_id = uploader_for(run, store)
    best = 0.0
    for epoch, fitness in enumerate([0.2, 0.1, 0.4]):
        best = max(best, fitness)
        epoch_end(run, spool, uploader, epoch, fitness, best)
        wait_for(lambda: uploader.uploads == epoch + 1, f"the upload of epoch {epoch}")
    assert uploader.stop(5) and not spool.close(5)

    models = client.search_logged_models([experiment_id])
    assert {m.status for m in models} == {LoggedModelStatus.READY}
    by_name = {name: sorted(m.tags["epoch"] for m in models if m.name == name) for name in (BEST, LAST)}
    assert by_name == {BEST: ["0", "2"], LAST: ["0", "1", "2"]}  # best.pt did not change at epoch 1
    outputs = {(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs}
    assert outputs == {(m.model_id, int(m.tags["epoch"])) for m in models}
    for model in models:
        linked = {m.key: (m.value, m.step, m.dataset_name, m.dataset_digest) for m in model.metrics}
        epoch = int(model.tags["epoch"])
        assert linked[MAP] == ([0.2, 0.1, 0.4][epoch], epoch, "synthetic", "val123")
    # Linking re-sent the spool's own points: every step is in the run's history once.
    assert [m.step for m in client.get_metric_history(run_id, MAP)] == [0, 1, 2]

    ranked = client.search_logged_models([experiment_id], order_by=[{"field_name": f"metrics.{MAP}",
                                                                      "ascending": False}])
    assert (ranked[0].tags["epoch"], ranked[0].metrics[0].step) == ("2", 2)
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/{ranked[0].model_id}")
    assert "python_function" in info.flavors and info.signature.inputs.input_names() == ["image"]
    # Both checkpoints of epoch 2 score its mAP; either way the model holds that epoch's weights.
    mlflow.artifacts.download_artifacts(f"models:/{ranked[0].model_id}", dst_path=str(tmp_path / "got"))
    assert [p.read_text() for p in (tmp_path / "got" / "artifacts").iterdir()] in (["best 2"], ["last 2"])


class FailingFiles:
    """A transport whose model file uploads fail: the server went away mid-model."""

    def __init__(self, inner: Transport) -> None:
        self.inner, self.models = inner, inner.models
        self.models.record = _FailingRecord(inner.record)

    def upload(self, path, artifact_dir):
        self.inner.upload(path, artifact_dir)

    def uploaded(self, epoch):
        self.inner.uploaded(epoch)


class _FailingRecord(RunRecord):
    def __init__(self, record: RunRecord) -> None:
        super().__init__(record.client, record.run_id)
        self.attempts = 0

    def log_model_files(self, model_id, folder):
        self.attempts += 1
        raise ConnectionError("Connection refused")


def test_a_model_abandoned_half_way_is_failed_never_ready(tmp_path, store):
    _, client, experiment_id, _ = store
    run = Run(tmp_path / "run")
    spool, transport, uploader, _ = uploader_for(run, store, FailingFiles)
    epoch_end(run, spool, uploader, 0, 0.3, 0.3)
    wait_for(lambda: transport.models.record.attempts >= 2, "a retried model upload")
    assert uploader.stop(5)  # the run ends: the model in flight is given up
    models = client.search_logged_models([experiment_id])
    assert models and {m.status for m in models} == {LoggedModelStatus.FAILED}
    spool.close(5)
