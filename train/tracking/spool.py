"""Per-epoch metrics on their way to the tracking server, never lost and never blocking training.

MLflow's own asynchronous logging gives up after its retry budget (about 4 minutes) and only logs
an ERROR line, so a run could end FINISHED with holes in its history. Here every epoch's points
keep their epoch-end timestamp and wait in a queue that one background thread delivers for as
long as the run lasts, retrying through outages. When the run ends, `close` waits a bounded time;
whatever the server still has not acknowledged is written to a local file (`PENDING_FILE`) that
`python -m train.tracking.sync` delivers later. Resending is safe: the server ignores a point it
already holds (same key, step, timestamp and value).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from mlflow import MlflowClient
from mlflow.entities import Metric

from train.tracking.record import RunRecord

PENDING_FILE = "tracking-pending.json"
_RETRY_WAIT_S = (1, 2, 5, 10)  # then every 10 s


@dataclass
class EpochPoints:
    step: int
    timestamp_ms: int
    metrics: Dict[str, float]

    def as_metrics(self) -> List[Metric]:
        return [Metric(key, value, self.timestamp_ms, self.step) for key, value in self.metrics.items()]


@dataclass
class PendingRecord:
    """What a run still owes its tracking server, kept in the run's output folder."""
    tracking_uri: str
    run_id: str
    status: str  # the end state to set once everything is delivered
    epochs: List[EpochPoints] = field(default_factory=list)
    outputs_uploaded: bool = False

    def save(self, folder: Path) -> Path:
        path = folder / PENDING_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: Path) -> "PendingRecord":
        raw = json.loads((folder / PENDING_FILE).read_text())
        raw["epochs"] = [EpochPoints(**e) for e in raw["epochs"]]
        return cls(**raw)


class MetricSpool:
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id = run_id
        self._queue: "queue.Queue[Optional[EpochPoints]]" = queue.Queue()
        self._unacknowledged: List[EpochPoints] = []
        self._sent: Dict[int, EpochPoints] = {}
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._deliver, name="mlflow-metric-spool", daemon=True)
        self._thread.start()

    def put(self, step: int, metrics: Dict[str, float]) -> None:
        points = EpochPoints(step, int(time.time() * 1000), metrics)
        with self._lock:
            self._unacknowledged.append(points)
            self._sent[step] = points
        self._queue.put(points)

    def points(self, step: int) -> Optional[EpochPoints]:
        """The points put for `step` (the last put, if several), as sent: a checkpoint's logged model links them."""
        with self._lock:
            return self._sent.get(step)

    def delivered_through(self, step: int) -> bool:
        """Whether the server holds every point put so far of the steps up to `step`."""
        with self._lock:
            return all(points.step > step for points in self._unacknowledged)

    def close(self, timeout_s: float) -> List[EpochPoints]:
        """Wait up to `timeout_s` for the server to hold every point; return those it still does not."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        with self._lock:
            return list(self._unacknowledged)

    def _next_batch(self) -> Optional[List[EpochPoints]]:
        """The next epoch, and every epoch queued behind it (after an outage they go in one request)."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while not self._queue.empty():
            points = self._queue.get()
            if points is None:
                self._queue.put(None)  # seen again once this batch is delivered
                break
            batch.append(points)
        return batch

    def _deliver(self) -> None:
        while (batch := self._next_batch()) is not None:
            attempt = 0
            while True:
                try:
                    RunRecord(self._client, self._run_id).log_metrics(
                        [m for points in batch for m in points.as_metrics()])
                    break
                except Exception as exc:  # noqa: BLE001 - an outage of any kind: keep the points and retry
                    self.failures += 1
                    self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    time.sleep(_RETRY_WAIT_S[min(attempt, len(_RETRY_WAIT_S) - 1)])
                    attempt += 1
            with self._lock:
                delivered = {id(points) for points in batch}
                self._unacknowledged = [p for p in self._unacknowledged if id(p) not in delivered]
