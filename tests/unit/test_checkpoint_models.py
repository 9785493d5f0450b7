"""Checkpoints as logged models (train/tracking/checkpoint_models.py) through the real uploader, spool and record,
on a real MLflow store (SQLite, local artifacts): READY only when complete, the epoch's metric points linked with
the validation dataset and never duplicated in the run's history, the best found by search_logged_models."""

from __future__ import annotations

import os
import threading

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import DatasetInput, InputTag, LoggedModelStatus

from tests.unit.test_checkpoints import Run, quick_retries, wait_for  # noqa: F401 - quick_retries is a fixture
from train.errors import ModelAbandoned
from train.model.detector import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES
from train.tracking.checkpoint_models import BEST, LAST, CheckpointModel, CheckpointModels
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


class _Recording(RunRecord):
    """A record that calls `during_upload` before the model's files go up."""

    def __init__(self, client, run_id, during_upload) -> None:
        super().__init__(client, run_id)
        self.during_upload = during_upload

    def log_model_files(self, model_id, folder):
        self.during_upload()
        super().log_model_files(model_id, folder)


def models_with(store, during_upload) -> CheckpointModels:
    uri, client, experiment_id, run_id = store
    return CheckpointModels(_Recording(client, run_id, during_upload), experiment_id, 64,
                            MetricSpool(uri, run_id).points)


def a_checkpoint(tmp_path, name=BEST):
    weights = tmp_path / f"{name}.pt"
    weights.write_text(f"{name} 3")
    return CheckpointModel(name, weights, 3)


class _UploaderLogsMeanwhile(list):
    """CheckpointModels.logged, where the uploader's thread sets a model READY right after each of ours."""

    def append(self, model_id):
        super().append(model_id)
        super().append("m-logged-meanwhile-by-the-uploader")


def test_a_pending_model_is_ready_only_when_told_and_is_its_own_while_the_uploader_logs_others(tmp_path, store):
    client, experiment_id = store[1], store[2]
    models = models_with(store, lambda: None)
    models.logged = _UploaderLogsMeanwhile()
    pending = models.log_pending(a_checkpoint(tmp_path))
    [model] = client.search_logged_models([experiment_id])
    assert model.status == LoggedModelStatus.PENDING  # files and links stored; the run's record not yet
    assert pending.ready() == f"models:/{model.model_id}"
    assert client.get_logged_model(model.model_id).status == LoggedModelStatus.READY
    pending.abandon()  # the run failed afterwards (registering it, say): a complete model stays READY
    assert client.get_logged_model(model.model_id).status == LoggedModelStatus.READY


def test_a_pending_model_abandoned_is_failed(tmp_path, store):
    models = models_with(store, lambda: None)
    models.log_pending(a_checkpoint(tmp_path)).abandon()
    assert [m.status for m in store[1].search_logged_models([store[2]])] == [LoggedModelStatus.FAILED]
    assert not models.logged


def test_a_model_cancelled_between_requests_is_failed_and_its_log_raises(tmp_path, store):
    cancelled = threading.Event()
    models = models_with(store, cancelled.set)  # the run ends while the files go up
    with pytest.raises(ModelAbandoned):
        models.log_pending(a_checkpoint(tmp_path), cancelled)
    assert [m.status for m in store[1].search_logged_models([store[2]])] == [LoggedModelStatus.FAILED]
    assert not models.logged


def test_a_listing_whose_answer_was_lost_is_not_sent_again(tmp_path, store):
    """The server took the model's listing among the run's outputs but the answer never came: the retry finds it
    listed (a second listing is refused) and goes on."""
    _, client, experiment_id, run_id = store

    class AnswerLost(RunRecord):
        lost = True

        def log_model_output(self, model_id, step):
            super().log_model_output(model_id, step)
            if self.lost:
                self.lost = False
                raise ConnectionError("Connection reset by peer")

    models = CheckpointModels(AnswerLost(client, run_id), experiment_id, 64, lambda epoch: None)
    abandoned = []
    create, list_in_run, *rest = models.steps(a_checkpoint(tmp_path), abandoned)
    create()
    with pytest.raises(ConnectionError):
        list_in_run()
    list_in_run()  # the uploader's retry
    for step in rest:
        step()
    assert [(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs] == [(models.logged[0], 3)]


def test_on_a_file_store_a_model_is_ready_without_links_and_the_history_gains_no_point(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store otherwise
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("file-store")
    run_id = client.create_run(experiment_id).info.run_id
    spool = MetricSpool(uri, run_id)
    spool.put(3, {MAP: 0.5})
    assert not spool.close(5)
    models = CheckpointModels(RunRecord(client, run_id), experiment_id, 64, spool.points)
    model_uri = models.log_pending(a_checkpoint(tmp_path)).ready()
    model = client.get_logged_model(model_uri.split("/")[-1])
    assert model.status == LoggedModelStatus.READY and not model.metrics
    assert [m.step for m in client.get_metric_history(run_id, MAP)] == [3]


def test_giving_up_leaves_the_processs_request_settings_alone_and_is_bounded(tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    seen, release = [], threading.Event()
    models = models_with(store, lambda: None)

    def hanging_finish(model_id, complete):
        seen.append(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
        release.wait(10)  # a server that never answers

    models.record.finish_logged_model = hanging_finish
    abandoned = ["m-1"]
    models.give_up(abandoned, timeout_s=0.2)
    assert seen == ["7"] and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert abandoned == ["m-1"]  # still PENDING: the server never said
    release.set()


def test_the_final_model_of_a_run_that_did_not_finish_is_never_ready(tmp_path, store, monkeypatch):
    """The end of the record failed (or SIGTERM came) while best.pt was being logged beside it: session.FinalModel
    is abandoned; its request in flight ends, nothing follows it, and the model is FAILED."""
    from types import SimpleNamespace

    from train import yolo
    from train.model import registry
    from train.tracking.session import FinalModel

    monkeypatch.setattr(yolo, "best_epoch", lambda results_csv: 3)
    monkeypatch.setattr(registry, "example_image", lambda data_yaml: tmp_path / "example.jpg")
    (tmp_path / "example.jpg").write_bytes(b"an image")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "best.pt").write_text("best 3")
    checks = tmp_path / "cache" / "serving-checks"  # passed before: left alone, the model would be READY
    checks.mkdir(parents=True)
    (checks / f"{registry._serving_check_key(64, DEFAULT_CONF_THRES, DEFAULT_IOU_THRES)}.passed").touch()
    uri, client, experiment_id, run_id = store
    in_flight, release, uploads = threading.Event(), threading.Event(), []

    class SlowCreate(RunRecord):
        def start_logged_model(self, *args, **kwargs):
            in_flight.set()
            release.wait(10)
            return super().start_logged_model(*args, **kwargs)

        def log_model_files(self, model_id, folder):
            uploads.append(model_id)
            super().log_model_files(model_id, folder)

    spool = MetricSpool(uri, run_id)
    spool.put(3, {MAP: 0.5})
    models = CheckpointModels(SlowCreate(client, run_id), experiment_id, 64, spool.points, tmp_path / "cache")
    session = SimpleNamespace(save_dir=tmp_path, data_yaml=tmp_path / "data.yaml",
                              config={"mlflow": {"delivery_timeout_s": 5}})
    final = FinalModel(session, models, spool)
    assert in_flight.wait(10)
    final.abandon(timeout_s=0.1)  # the create request is still in flight
    release.set()
    with pytest.raises(ModelAbandoned):
        final.ready()
    assert [m.status for m in client.search_logged_models([experiment_id])] == [LoggedModelStatus.FAILED]
    assert not models.logged and not uploads
    spool.close(5)
