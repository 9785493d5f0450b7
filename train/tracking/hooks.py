"""YOLOv5 training events, recorded in the active MLflow run as they happen.

Register on RANK -1/0 only, as YOLOv5 does with its own loggers. Metrics leave through MLflow's
asynchronous logging queue (one batched request per epoch, off the training thread); `flush`
waits for every one of them and raises if any was refused, so a run never ends FINISHED with
holes in its history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import mlflow

from train.tracking.names import sanitize_key


def results_columns(results_csv: Path) -> List[str]:
    """results.csv's header without 'epoch': YOLOv5 pads the cells with spaces."""
    with open(results_csv) as f:
        header = f.readline()
    return [cell.strip() for cell in header.split(",")][1:]


class MlflowHooks:
    def __init__(self, run_id: str, save_dir: Path) -> None:
        self.run_id = run_id
        self.results_csv = save_dir / "results.csv"
        self.last_metrics: Dict[str, float] = {}
        self._columns: List[str] = []
        self._pending: List[mlflow.utils.async_logging.run_operations.RunOperations] = []
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
        self._pending.append(mlflow.log_metrics(metrics, step=epoch, synchronous=False, run_id=self.run_id))

    def flush(self) -> None:
        """Block until every epoch's metrics are stored; raise if the server refused any."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()
