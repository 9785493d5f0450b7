"""YOLOv5 training events, recorded in the active MLflow run as they happen.

Register on RANK -1/0 only, as YOLOv5 does with its own loggers. Each epoch's metrics go to a
`MetricSpool` (train/tracking/spool.py): one batched request per epoch, sent off the training
thread, kept until the server has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from train.tracking.names import sanitize_key
from train.tracking.spool import MetricSpool


def results_columns(results_csv: Path) -> List[str]:
    """results.csv's header without 'epoch': YOLOv5 pads the cells with spaces."""
    with open(results_csv) as f:
        header = f.readline()
    return [cell.strip() for cell in header.split(",")][1:]


def last_row_metrics(results_csv: Path) -> Dict[str, float]:
    """results.csv's last row as the metrics its epoch logged; empty without rows."""
    if not results_csv.is_file():
        return {}
    rows = [r for r in results_csv.read_text().splitlines()[1:] if r.strip()]
    if not rows:
        return {}
    values = [float(cell) for cell in rows[-1].split(",")[1:]]
    return {sanitize_key(name): value for name, value in zip(results_columns(results_csv), values)}


class MlflowHooks:
    def __init__(self, spool: MetricSpool, save_dir: Path) -> None:
        self.spool = spool
        self.results_csv = save_dir / "results.csv"
        self.last_metrics: Dict[str, float] = {}
        self._columns: List[str] = []
        self._callbacks = None

    def register(self, callbacks) -> None:  # yolov5.utils.callbacks.Callbacks
        self._callbacks = callbacks
        callbacks.register_action("on_pretrain_routine_end", name="mlflow", callback=self.on_pretrain_routine_end)

    def on_pretrain_routine_end(self, *args) -> None:
        # Registered this late on purpose: YOLOv5 adds its own loggers after our first hooks, and
        # our epoch hook must run after theirs so results.csv (whose header names the columns) exists.
        self._callbacks.register_action("on_fit_epoch_end", name="mlflow", callback=self.on_fit_epoch_end)

    def on_fit_epoch_end(self, vals: Sequence[float], epoch: int, best_fitness, fi) -> None:
        if not self._columns:
            self._columns = results_columns(self.results_csv)
        metrics = {sanitize_key(name): float(value) for name, value in zip(self._columns, vals)}
        self.last_metrics = metrics
        self.spool.put(epoch, metrics)
