"""PlotHooks (train/tracking/plots.py): YOLOv5's plot files into a real MLflow run (SQLite, file artifacts in the
test's folder) as images, and its final validation as tables, in the order YOLOv5's train() runs its events.

The files are real images drawn with PIL where YOLOv5 writes them; one is written by a thread named like YOLOv5's
@threaded plot_images, still writing when the epoch ends. The callbacks are a stand-in with YOLOv5's semantics
(actions run in registration order): importing YOLOv5 takes seconds, test_hooks.py holds its real Callbacks."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from train.tracking import plots as plots_module
from train.tracking.plots import (CONFUSION_TABLE, PER_CLASS_TABLE, PlotHooks, confusion_table, per_class_table)
from train.tracking.record import RunRecord

NAMES = {0: "circle", 1: "square", 2: "triangle"}
END_PNGS = ("results.png", "confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png")


class Callbacks:
    """yolov5.utils.callbacks.Callbacks' semantics: each hook's actions run in the order they were registered."""

    def __init__(self) -> None:
        self.actions: Dict[str, List[Tuple[str, object]]] = {}

    def register_action(self, hook, name="", callback=None) -> None:
        self.actions.setdefault(hook, []).append((name, callback))

    def run(self, hook, *args, **kwargs) -> None:
        for _, callback in self.actions.get(hook, []):
            callback(*args, **kwargs)

    def names(self, hook) -> List[str]:
        return [name for name, _ in self.actions.get(hook, [])]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(plots_module, "_RETRY_WAIT_S", (0.01, 0.02))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("plots", artifact_location=(folder / "artifacts").as_uri())
    return SimpleNamespace(client=client, experiment=experiment)


@pytest.fixture
def record(store):
    return RunRecord(store.client, store.client.create_run(store.experiment).info.run_id)


def draw(path: Path, kind: str = "RGB") -> Path:
    Image.new(kind, (48, 32), (200, 30, 30, 255)[:len(kind)]).save(path)
    return path


def draw_slowly(path: Path, delay_s: float) -> threading.Thread:
    """As YOLOv5's @threaded plot_images: a daemon thread named 'Thread-<n> (plot_images)', the file half written
    until `delay_s` has passed."""
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (30, 200, 30)).save(buffer, format="JPEG")
    whole = buffer.getvalue()
    path.write_bytes(whole[:len(whole) // 2])

    def plot_images() -> None:
        time.sleep(delay_s)
        path.write_bytes(whole)

    thread = threading.Thread(target=plot_images, daemon=True)
    thread.start()
    assert thread.name.endswith("(plot_images)")
    return thread


def images(record: RunRecord) -> Dict[str, List[int]]:
    """key -> steps of the run's images (each a .png and a .webp preview)."""
    found: Dict[str, List[int]] = {}
    files = [item.path for item in record.client.list_artifacts(record.run_id, "images")]
    for path in files:
        if path.endswith(".png"):
            key, _, step = path.removeprefix("images/").split("+")[:3]
            found.setdefault(key, []).append(int(step))
            assert path.removesuffix(".png") + "+compressed.webp" in files
    return {key: sorted(steps) for key, steps in found.items()}


def table(record: RunRecord, artifact_file: str) -> dict:
    return json.loads(Path(record.client.download_artifacts(record.run_id, artifact_file)).read_text())


def start(hooks: PlotHooks, save_dir: Path) -> Callbacks:
    """train() up to the first batch: our hooks, YOLOv5's Loggers (drawing the labels), on_train_start."""
    callbacks = Callbacks()
    hooks.register(callbacks)
    callbacks.register_action("on_pretrain_routine_end", callback=lambda labels, names: (
        draw(save_dir / "labels.jpg"), draw(save_dir / "labels_correlogram.jpg")))
    callbacks.register_action("on_train_end", callback=lambda *args: draw(save_dir / "results.png", "RGBA"))
    callbacks.run("on_pretrain_routine_end", np.zeros((0, 5)), NAMES)
    callbacks.run("on_train_start")
    return callbacks


def validate(callbacks: Callbacks, final: bool, save_dir: Path) -> None:
    """val.run: two batches of 4 images; (image in batch, class, box) targets; on_val_end only when plotting."""
    callbacks.run("on_val_start")
    batches = [np.array([[0, 0, 1, 1, 1, 1], [0, 0, 2, 2, 1, 1], [1, 1, 1, 1, 1, 1], [3, 0, 1, 1, 1, 1]]),
               np.array([[0, 1, 1, 1, 1, 1], [2, 1, 1, 1, 1, 1]])]
    for i, targets in enumerate(batches):
        callbacks.run("on_val_batch_end", i, None, targets, [f"im{k}.jpg" for k in range(4)], None, None)
    if final:
        for name in END_PNGS[1:]:
            draw(save_dir / name, "RGBA")
        for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg"):
            draw(save_dir / name)
        draw_slowly(save_dir / "val_batch1_pred.jpg", 0.3)
        nt = np.array([4, 3, 0])
        matrix = np.array([[3, 0, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
        callbacks.run("on_val_end", nt, None, None, np.array([0.75, 0.5]), np.array([0.6, 0.4]), None,
                      np.array([0.3, 0.2]), np.array([0.7, 0.45]), np.array([0, 1]), SimpleNamespace(matrix=matrix))


def test_images_as_they_appear_and_the_final_validation_as_tables(record, tmp_path, capsys):
    hooks = PlotHooks(record, tmp_path)
    callbacks = start(hooks, tmp_path)
    assert callbacks.names("on_train_end") == ["", "mlflow-plots"]  # after YOLOv5's Loggers draw results.png
    for i in range(2):
        draw(tmp_path / f"train_batch{i}.jpg")
    plotting = draw_slowly(tmp_path / "train_batch2.jpg", 0.3)  # its thread still writes when the epoch ends
    validate(callbacks, False, tmp_path)
    callbacks.run("on_fit_epoch_end", [0.0], 0, 0.0, 0.0)
    validate(callbacks, False, tmp_path)
    callbacks.run("on_fit_epoch_end", [0.0], 1, 0.0, 0.0)
    plotting.join()
    validate(callbacks, True, tmp_path)  # best.pt's, after training
    callbacks.run("on_train_end", None, None, 1, None)
    assert hooks.close(10)

    assert images(record) == {
        "labels": [0], "labels_correlogram": [0], "train_batch0": [0], "train_batch1": [0], "train_batch2": [0],
        **{Path(name).stem: [1] for name in END_PNGS},
        "val_batch0_labels": [1], "val_batch0_pred": [1], "val_batch1_labels": [1], "val_batch1_pred": [1]}
    assert record.client.get_run(record.run_id).data.tags["mlflow.loggedImages"] == "True"
    per_class = table(record, PER_CLASS_TABLE)
    assert per_class["columns"] == ["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]
    assert per_class["data"] == [["all", 8, 7, 0.625, 0.5, 0.575, 0.25],
                                 ["circle", 2, 4, 0.75, 0.6, 0.7, 0.3],  # image 0 of batch 0 holds two circles
                                 ["square", 3, 3, 0.5, 0.4, 0.45, 0.2]]
    confusion = table(record, CONFUSION_TABLE)
    assert confusion["columns"] == ["predicted", "true circle", "true square", "true triangle", "true background"]
    assert confusion["data"] == [["circle", 3, 0, 0, 1], ["square", 1, 2, 0, 0], ["triangle", 0, 0, 0, 0],
                                 ["background", 0, 1, 0, 0]]
    assert len(hooks.epoch_s) == 2 and max(hooks.epoch_s) < 0.05  # the training thread only counts and enqueues
    assert "MLflow images and tables: 15 images, 2 tables" in capsys.readouterr().out


def test_noplots_registers_nothing_and_sends_nothing(record, tmp_path):
    hooks = PlotHooks(record, tmp_path, enabled=False)
    callbacks = Callbacks()
    hooks.register(callbacks)
    assert callbacks.actions == {}
    assert hooks.close(1)
    assert record.client.list_artifacts(record.run_id) == []


def test_a_resumed_run_sends_no_start_images_and_no_files_of_an_earlier_training(record, tmp_path):
    old = draw(tmp_path / "train_batch0.jpg")
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # the first attempt's, left in the folder
    hooks = PlotHooks(record, tmp_path, resumed=True)
    callbacks = start(hooks, tmp_path)
    callbacks.run("on_fit_epoch_end", [0.0], 5, 0.0, 0.0)
    callbacks.run("on_train_end", None, None, 5, None)  # no final validation with plots: no tables
    assert hooks.close(10)
    assert images(record) == {"results": [5]}
    assert [item.path for item in record.client.list_artifacts(record.run_id)] == ["images"]


def test_an_attempt_trained_again_does_not_send_what_the_run_has(record, tmp_path):
    first = PlotHooks(record, tmp_path)
    start(first, tmp_path)
    assert first.close(10)
    second = PlotHooks(record, tmp_path)  # a retried attempt without a checkpoint: trained from the start
    start(second, tmp_path)
    assert second.close(10)
    assert images(record) == {"labels": [0], "labels_correlogram": [0]}
    assert second.images == []


class Outage:
    """A tracking server that refuses every write."""

    def __getattr__(self, name):
        def refused(*args, **kwargs):
            raise ConnectionError("Connection refused")
        return refused


def test_an_outage_never_reaches_training_and_the_end_is_bounded(tmp_path, capsys):
    hooks = PlotHooks(RunRecord(Outage(), "0" * 32), tmp_path)
    callbacks = start(hooks, tmp_path)
    draw(tmp_path / "train_batch0.jpg")
    validate(callbacks, True, tmp_path)
    callbacks.run("on_fit_epoch_end", [0.0], 0, 0.0, 0.0)
    callbacks.run("on_train_end", None, None, 0, None)
    started = time.monotonic()
    assert not hooks.close(0.5)
    assert time.monotonic() - started < 2
    out = capsys.readouterr().out
    assert "MLflow images and tables dropped" in out and "Connection refused" in out
    assert "per_class_metrics.json" in out and "train_batch" in out
    assert hooks.failures > 0 and hooks.images == []


def test_a_failed_training_drops_what_waits(record, tmp_path, capsys):
    hooks = PlotHooks(record, tmp_path)
    plotting = draw_slowly(tmp_path / "train_batch0.jpg", 0.5)  # the start job waits for YOLOv5's plotting threads
    callbacks = start(hooks, tmp_path)
    while hooks._queue.qsize():  # until the thread has taken the start job
        time.sleep(0.01)
    callbacks.run("on_fit_epoch_end", [0.0], 0, 0.0, 0.0)  # queued behind it
    assert not hooks.close(5, drop_waiting=True)  # training raised: only the job in hand goes on
    plotting.join()
    assert images(record) == {"labels": [0], "labels_correlogram": [0]}
    assert "train_batch*.jpg (epoch 0) (training did not end well)" in capsys.readouterr().out


def test_tables_of_a_validation_without_a_right_prediction():
    # val.py without a true positive: p, r, ap50 stay 0.0 and ap, ap_class []; YOLOv5 reports zeros
    data = per_class_table(NAMES, np.array([2, 0, 1]), 0.0, 0.0, 0.0, [], [], np.array([1, 0, 1]), 3)
    assert data["class"] == ["all", "circle", "triangle"]
    assert data["images"] == [3, 1, 1] and data["instances"] == [3, 2, 1]
    assert data["P"] == data["mAP50-95"] == [0.0, 0.0, 0.0]
    confusion = confusion_table({0: "a", 1: "a"}, np.zeros((3, 3)))
    assert list(confusion) == ["predicted", "true a", "true a (2)", "true background"]
