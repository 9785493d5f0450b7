"""MlflowHooks (train/tracking/hooks.py) in YOLOv5's own Callbacks, beside YOLOv5's own Loggers writing results.csv.

The order is YOLOv5's train(): our hooks are registered first, YOLOv5 then registers its Loggers' methods, runs
on_pretrain_routine_end, and at each epoch's end runs on_fit_epoch_end(vals, epoch, best_fitness, fi). The spool is
a stand-in that records what it is given (test_spool.py tests the real one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest

from train.tracking.hooks import MlflowHooks, results_columns

CLASSES = ["circle", "traffic light", "a:b"]  # class names land in column names: a space is valid, ':' is not
SANITIZED = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
             "metrics/mAP_0.5", "metrics/mAP_0.5_0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
             "x/lr0", "x/lr1", "x/lr2",
             "metrics/circle_mAP", "metrics/traffic light_mAP", "metrics/a_b_mAP",
             "metrics/circle_mAP_50", "metrics/traffic light_mAP_50", "metrics/a_b_mAP_50"]


class RecordingSpool:
    def __init__(self) -> None:
        self.puts: List[Tuple[int, Dict[str, float]]] = []

    def put(self, step: int, metrics: Dict[str, float]) -> None:
        self.puts.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def yolov5(tmp_path_factory):
    saved = dict(os.environ)  # the offline switches precede `import yolov5`; the environment is restored after
    from train import offline

    offline.apply(tmp_path_factory.mktemp("cache"))
    from yolov5.utils.callbacks import Callbacks
    from yolov5.utils.general import methods
    from yolov5.utils.loggers import Loggers

    yield SimpleNamespace(Callbacks=Callbacks, Loggers=Loggers, methods=methods)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def training(yolov5, tmp_path):
    """YOLOv5's train() up to its first epoch: (callbacks, hooks, spool), with results.csv in tmp_path."""
    callbacks, spool = yolov5.Callbacks(), RecordingSpool()
    hooks = MlflowHooks(spool, tmp_path)
    hooks.register(callbacks)  # before YOLOv5 adds its loggers, as train/yolo.py does
    assert "mlflow" not in names(callbacks, "on_fit_epoch_end")
    opt = SimpleNamespace(noplots=True, evolve=False, resume=False, s3_upload_dir="")
    loggers = yolov5.Loggers(tmp_path, None, opt, {}, logging.getLogger("yolov5-test"), include=("csv",),
                             class_names=CLASSES)
    for name in yolov5.methods(loggers):  # as yolov5/train.py registers them
        callbacks.register_action(name, callback=getattr(loggers, name))
    callbacks.run("on_pretrain_routine_end", [], dict(enumerate(CLASSES)))
    return callbacks, hooks, spool


def names(callbacks, hook: str) -> List[str]:
    return [action["name"] for action in callbacks.get_registered_actions(hook)]


def epoch_vals(epoch: int) -> List[float]:
    return [round(0.01 * (epoch + 1) * (i + 1), 6) for i in range(len(SANITIZED))]


def test_the_epoch_hook_is_registered_after_yolov5s_loggers(training):
    callbacks, _, _ = training
    assert names(callbacks, "on_fit_epoch_end") == ["", "mlflow"]  # YOLOv5's Loggers (unnamed), then ours


def test_one_batch_per_epoch_with_every_results_column_sanitized(training, tmp_path):
    callbacks, hooks, spool = training
    for epoch in range(3):
        callbacks.run("on_fit_epoch_end", epoch_vals(epoch), epoch, 0.0, 0.0)

    assert [step for step, _ in spool.puts] == [0, 1, 2]
    for epoch, (_, metrics) in enumerate(spool.puts):
        assert list(metrics) == SANITIZED
        assert list(metrics.values()) == epoch_vals(epoch)  # the values YOLOv5 passed, not results.csv's rounding
        assert all(type(value) is float for value in metrics.values())
    assert hooks.last_metrics == spool.puts[-1][1]
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 3  # YOLOv5's header and rows


def test_results_csv_header_as_yolov5_pads_it(training, tmp_path):
    callbacks, _, _ = training
    callbacks.run("on_fit_epoch_end", epoch_vals(0), 0, 0.0, 0.0)
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("               epoch,")  # right-aligned to 20 characters
    assert "metrics/mAP_0.5:0.95" in header

    columns = results_columns(tmp_path / "results.csv")

    assert columns[:7] == ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                           "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
    assert columns[-1] == "metrics/a:b_mAP_50" and len(columns) == len(SANITIZED)


def test_without_yolov5s_results_csv_the_epoch_hook_has_no_column_names(yolov5, tmp_path):
    """Why it is registered late: run before YOLOv5's logger, the file it reads would not exist yet."""
    callbacks, spool = yolov5.Callbacks(), RecordingSpool()
    hooks = MlflowHooks(spool, tmp_path)
    hooks.register(callbacks)
    callbacks.run("on_pretrain_routine_end", [], {})
    with pytest.raises(FileNotFoundError):
        callbacks.run("on_fit_epoch_end", epoch_vals(0), 0, 0.0, 0.0)
    assert spool.puts == [] and not Path(tmp_path / "results.csv").exists()
