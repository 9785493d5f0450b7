"""Which epoch best.pt holds, read back from results.csv with YOLOv5's own fitness (0.1 mAP_0.5 + 0.9 mAP_0.5:0.95)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HEADER = ("               epoch,      train/box_loss,   metrics/precision,      metrics/recall,     metrics/mAP_0.5,"
          "metrics/mAP_0.5:0.95,        val/box_loss,  metrics/circle_mAP")


@pytest.fixture(scope="module")
def best_epoch(tmp_path_factory):
    saved = dict(os.environ)  # the offline switches precede `import yolov5`; the environment is restored after
    from train import offline

    offline.apply(tmp_path_factory.mktemp("cache"))
    from train.yolo import best_epoch

    yield best_epoch
    os.environ.clear()
    os.environ.update(saved)


def _results(tmp_path: Path, *rows) -> Path:
    # YOLOv5 right-aligns every cell to 20 characters; the epoch is the row's first cell.
    path = tmp_path / "results.csv"
    path.write_text("\n".join([HEADER, *(",".join(f"{v:>20}" for v in row) for row in rows)]) + "\n")
    return path


def test_the_fittest_epoch_by_yolov5s_weights(best_epoch, tmp_path):
    # epoch 1 has the best mAP_0.5, epoch 2 the best mAP_0.5:0.95, which weighs 9 times more.
    rows = [(0, 0.1, 0.5, 0.5, 0.10, 0.05, 0.1, 0.0), (1, 0.1, 0.9, 0.9, 0.90, 0.10, 0.1, 0.0),
            (2, 0.1, 0.1, 0.1, 0.20, 0.20, 0.1, 0.0), (3, 0.1, 0.9, 0.9, 0.50, 0.15, 0.1, 0.0)]
    assert best_epoch(_results(tmp_path, *rows)) == 2


def test_ties_go_to_the_later_epoch_as_yolov5_saves_best_pt_again(best_epoch, tmp_path):
    rows = [(5, 0.1, 0.5, 0.5, 0.3, 0.2, 0.1, 0.0), (6, 0.1, 0.5, 0.5, 0.3, 0.2, 0.1, 0.0),
            (7, 0.1, 0.5, 0.5, 0.1, 0.1, 0.1, 0.0)]
    assert best_epoch(_results(tmp_path, *rows)) == 6  # a resumed run's rows need not start at 0


def test_no_rows_yet(best_epoch, tmp_path):
    assert best_epoch(_results(tmp_path)) == 0
