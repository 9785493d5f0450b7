"""What tracking costs (1, 6), how fast an epoch's metrics show on the server (3), and the end-of-run tail (4)."""

from __future__ import annotations

import threading
import time
from statistics import median, quantiles
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from mlflow import MlflowClient

from bench.harness import (Datasets, Pairs, Timed, client_env, data_overrides, interleaved,
                           run_timed, train_argv)
from tests.servers import TrackingServer

PROBE = "metrics/mAP_0.5"


@dataclass
class Settings:
    """The training every tracking benchmark runs: yolov5n from scratch on small synthetic images, no plots."""
    imgsz: int
    batch: int

    def overrides(self, data: Datasets, nc: int, epochs: int) -> List[str]:
        return [*data_overrides(data, nc), f"train.epochs={epochs}", f"train.imgsz={self.imgsz}",
                f"train.batch={self.batch}", "train.workers=0", "model=yolov5n", "train.device=cpu",
                "train.noplots=true"]


class TrackedRuns:
    """Launches trainings that track to `server`, one experiment each, and remembers them for the tail figures."""

    def __init__(self, server: TrackingServer, workdir: Path, data: Datasets) -> None:
        self.server, self.workdir, self.data = server, workdir, data
        self.client = MlflowClient(tracking_uri=server.uri)
        self.finished: List[tuple] = []  # (experiment name, Timed)
        self._count = 0

    def _next(self, label: str) -> str:
        self._count += 1
        return f"bench-{label}-{self._count}"

    def tracked(self, overrides: List[str], label: str) -> Timed:
        experiment = self._next(label)
        env = client_env(MLFLOW_TRACKING_URI=self.server.uri, MLFLOW_EXPERIMENT_NAME=experiment,
                         YOLOV5_MLFLOW_CACHE=str(self.data.cache_dir))
        timed = run_timed(train_argv(*overrides), self.workdir / experiment, env)
        self.finished.append((experiment, timed))
        return timed

    def untracked(self, overrides: List[str], label: str) -> Timed:
        env = client_env(YOLOV5_MLFLOW_CACHE=str(self.data.cache_dir))
        return run_timed(train_argv(*overrides, "mlflow.enabled=false"), self.workdir / self._next(label), env)

    def run_of(self, experiment: str):
        [run] = self.client.search_runs([self.client.get_experiment_by_name(experiment).experiment_id])
        return run


def overhead(runs: TrackedRuns, settings: Settings, epochs: int, nc: int, pairs: int) -> Pairs:
    """Start to exit, tracking off (A) against full tracking to the server (B)."""
    overrides = settings.overrides(runs.data, nc, epochs)
    label = f"overhead-e{epochs}-nc{nc}"
    return interleaved(pairs, lambda: runs.untracked(overrides, label).seconds,
                       lambda: runs.tracked(overrides, label).seconds)


def _artifact_bytes(client: MlflowClient, run_id: str, path: Optional[str] = None) -> int:
    total = 0
    for item in client.list_artifacts(run_id, path):
        total += _artifact_bytes(client, run_id, item.path) if item.is_dir else (item.file_size or 0)
    return total


def tails(runs: TrackedRuns, label_prefix: str) -> List[Dict[str, float]]:
    """Per tracked run: seconds from the last epoch's end (its metrics' timestamp) to process exit, and bytes."""
    figures = []
    for experiment, timed in runs.finished:
        if not experiment.startswith(f"bench-{label_prefix}"):
            continue
        run = runs.run_of(experiment)
        last_epoch_end = max(m.timestamp for m in runs.client.get_metric_history(run.info.run_id, PROBE)) / 1000
        figures.append({"tail_s": timed.exited_at - last_epoch_end,
                        "bytes": _artifact_bytes(runs.client, run.info.run_id)})
    return figures


def live_latency(runs: TrackedRuns, settings: Settings, epochs: int) -> Dict[str, object]:
    """Seconds from each epoch's end (the timestamp its metrics carry, taken in YOLOv5's callback) until the
    server's API returns them, polled every 50 ms from another process's point of view (this one)."""
    seen: Dict[int, float] = {}
    experiment_holder: List[str] = []
    done = threading.Event()

    def poll() -> None:
        client = MlflowClient(tracking_uri=runs.server.uri)
        run_id = None
        while not done.is_set():
            if run_id is None and experiment_holder:
                found = client.get_experiment_by_name(experiment_holder[0])
                runs_found = client.search_runs([found.experiment_id]) if found else []
                run_id = runs_found[0].info.run_id if runs_found else None
            if run_id is not None:
                now = time.time()
                for metric in client.get_metric_history(run_id, PROBE):
                    seen.setdefault(metric.step, now - metric.timestamp / 1000)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    experiment_holder.append(f"bench-latency-{runs._count + 1}")
    poller.start()
    try:
        runs.tracked(settings.overrides(runs.data, 3, epochs), "latency")
    finally:
        done.set()
        poller.join()
    latencies = [seen[step] for step in sorted(seen)]
    return {"epochs_seen": len(latencies), "median_s": round(median(latencies), 3),
            "p90_s": round(quantiles(latencies, n=10, method="inclusive")[-1], 3), "max_s": round(max(latencies), 3)}
