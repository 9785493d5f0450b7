"""What tracking costs (1, 6), how fast an epoch's metrics show on the server (3), and the end-of-run tail (4).

1, 4 and the epochs part of 6 come from one set of pairs of 100-epoch trainings, each watched from outside
(bench.harness.Timed): the start-to-exit time of the same run stopped after E epochs is its start and first
E epochs as measured plus its end (last epoch to exit), so 10, 30 and 100 epochs cost one set of runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median, quantiles
from typing import Dict, List, Optional, Sequence, Tuple

from mlflow import MlflowClient

from bench.harness import (Datasets, Pairs, Timed, client_env, data_overrides, interleaved, run_timed,
                           session_cpu_s, train_argv)
from testbed.servers import TrackingServer

PROBE = "metrics/mAP_0.5"


@dataclass
class Settings:
    """The training every tracking benchmark runs: yolov5n from scratch on small synthetic images, no plots."""
    imgsz: int
    batch: int

    def overrides(self, data: Datasets, nc: int, epochs: int) -> List[str]:
        # The tests' preset (conf/debug/tiny.yaml: workers 0, small images), at the benchmark's size and data.
        return ["debug=tiny", *data_overrides(data, nc), f"train.epochs={epochs}", f"train.imgsz={self.imgsz}",
                f"train.batch={self.batch}", "model=yolov5n", "train.device=cpu", "train.noplots=true"]


class TrackedRuns:
    """Launches trainings, tracked to `server` (one experiment each) or not, each in a folder of its own."""

    def __init__(self, server: TrackingServer, workdir: Path, data: Datasets) -> None:
        self.server, self.workdir, self.data = server, workdir, data
        self.client = MlflowClient(tracking_uri=server.uri)
        self.server_cpu_s: Dict[str, float] = {}  # per tracked run (experiment): the server's CPU seconds meanwhile
        self._count = 0

    def next_name(self, label: str) -> str:
        self._count += 1
        return f"bench-{label}-{self._count}"

    def tracked(self, overrides: List[str], label: str, experiment: Optional[str] = None) -> Tuple[str, Timed]:
        experiment = experiment or self.next_name(label)
        env = client_env(MLFLOW_TRACKING_URI=self.server.uri, MLFLOW_EXPERIMENT_NAME=experiment,
                         YOLOV5_MLFLOW_CACHE=str(self.data.cache_dir))
        cpu_before = session_cpu_s(self.server.pid)
        timed = run_timed(train_argv(*overrides), self.workdir / experiment, env)
        self.server_cpu_s[experiment] = session_cpu_s(self.server.pid) - cpu_before
        return experiment, timed

    def untracked(self, overrides: List[str], label: str) -> Timed:
        env = client_env(YOLOV5_MLFLOW_CACHE=str(self.data.cache_dir))
        return run_timed(train_argv(*overrides, "mlflow.enabled=false"), self.workdir / self.next_name(label), env)

    def run_id(self, experiment: str) -> str:
        [run] = self.client.search_runs([self.client.get_experiment_by_name(experiment).experiment_id])
        return run.info.run_id


@dataclass
class Trainings:
    """Interleaved pairs of the same training: tracking off (A) and full tracking to the server (B)."""
    off: List[Timed]
    on: List[Timed]
    experiments: List[str]  # of the tracked ones, in order

    def at(self, epochs: int) -> Pairs:
        return Pairs([t.as_if(epochs) for t in self.off], [t.as_if(epochs) for t in self.on])

    def end(self) -> Pairs:
        return Pairs([t.end_s for t in self.off], [t.end_s for t in self.on])


def trainings(runs: TrackedRuns, settings: Settings, epochs: int, nc: int, pairs: int) -> Trainings:
    overrides = settings.overrides(runs.data, nc, epochs)
    label = f"e{epochs}-nc{nc}"
    result = Trainings([], [], [])

    def off() -> float:
        result.off.append(runs.untracked(overrides, label))
        return result.off[-1].seconds

    def on() -> float:
        experiment, timed = runs.tracked(overrides, label)
        result.on.append(timed)
        result.experiments.append(experiment)
        return timed.seconds

    interleaved(pairs, off, on)
    return result


def scaling(runs: TrackedRuns, family: Trainings, tiers: Sequence[int]) -> Dict[str, Dict[str, object]]:
    """Per number of epochs: off, on, their ratio and the seconds tracking adds; then where those come from,
    and the CPU the server spent per tracked run (here it shares the machine's cores with the training)."""
    figures: Dict[str, Dict[str, object]] = {f"epochs={e}": family.at(e).summary() for e in tiers}
    first, last = min(tiers), max(tiers)
    through = [median(on.epoch_ends[e - 1] - on.started_at for on in family.on)
               - median(off.epoch_ends[e - 1] - off.started_at for off in family.off) for e in (1, first, last)]
    end = family.end()
    figures["split"] = {"start_to_first_epoch_s": round(through[0], 3),
                        "per_epoch_ms": round(1000 * (through[2] - through[1]) / (last - first), 1),
                        "end_s": round(median(end.b) - median(end.a), 3),
                        "server_cpu_per_run_s": round(median(runs.server_cpu_s[e] for e in family.experiments), 2)}
    return figures


def _artifact_bytes(client: MlflowClient, run_id: str, path: Optional[str] = None) -> int:
    total = 0
    for item in client.list_artifacts(run_id, path):
        total += _artifact_bytes(client, run_id, item.path) if item.is_dir else (item.file_size or 0)
    return total


def tails(runs: TrackedRuns, family: Trainings) -> List[Dict[str, float]]:
    """Per tracked run: seconds from the last epoch's end to process exit, and the bytes it uploaded."""
    return [{"tail_s": timed.end_s, "bytes": _artifact_bytes(runs.client, runs.run_id(experiment))}
            for experiment, timed in zip(family.experiments, family.on)]


def live_latency(runs: TrackedRuns, settings: Settings, epochs: int) -> Dict[str, object]:
    """Seconds from each epoch's end (the timestamp its metrics carry, taken in YOLOv5's callback) until the
    server's API returns them, polled every 50 ms from another process's point of view (this one)."""
    seen: Dict[int, float] = {}
    experiment = runs.next_name("latency")
    done = threading.Event()

    def poll() -> None:
        client = MlflowClient(tracking_uri=runs.server.uri)
        run_id = None
        while not done.is_set():
            if run_id is None:
                found = client.get_experiment_by_name(experiment)
                runs_found = client.search_runs([found.experiment_id]) if found else []
                run_id = runs_found[0].info.run_id if runs_found else None
            if run_id is not None:
                now = time.time()
                for metric in client.get_metric_history(run_id, PROBE):
                    seen.setdefault(metric.step, now - metric.timestamp / 1000)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        runs.tracked(settings.overrides(runs.data, 3, epochs), "latency", experiment)
    finally:
        done.set()
        poller.join()
    latencies = [seen[step] for step in sorted(seen)]
    return {"epochs_seen": len(latencies), "median_s": round(median(latencies), 3),
            "p90_s": round(quantiles(latencies, n=10, method="inclusive")[-1], 3), "max_s": round(max(latencies), 3)}


def default_config(runs: TrackedRuns, epochs: int, pairs: int) -> Dict[str, object]:
    """13: the recipe's own defaults (conf/: yolov5n on the synthetic shapes at 128 px, 256 + 64 images, batch 16,
    YOLOv5's plots, and every tracking feature as configured: system metrics, images, checkpoints every 5 minutes,
    which these runs of half a minute never reach: figure 11 is what a snapshot costs), only the epochs cut;
    tracked against `mlflow.enabled=false`, interleaved. The time per epoch is the first epoch's end to the last's
    (the run's start and end left out); the cost is the difference of the sides' medians, also as a share of the
    untracked epoch."""
    overrides = [f"train.epochs={epochs}"]
    off: List[Timed] = []
    on: List[Timed] = []

    def run(tracked: bool) -> float:
        timed = runs.tracked(overrides, "default-config")[1] if tracked else runs.untracked(overrides, "default")
        if len(timed.epoch_ends) != epochs:
            raise RuntimeError(f"{timed.folder}: saw {len(timed.epoch_ends)} of {epochs} epochs end")
        (on if tracked else off).append(timed)
        return timed.per_epoch_s

    pairs_seen = interleaved(pairs, lambda: run(False), lambda: run(True))
    a, b = median(t.per_epoch_s for t in off), median(t.per_epoch_s for t in on)
    return {"epochs": epochs, "pairs": pairs, "per_epoch_ms_a": round(1000 * a, 1),
            "per_epoch_ms_b": round(1000 * b, 1), "per_epoch_cost_ms": round(1000 * (b - a), 1),
            "share_of_epoch_percent": round(100 * (b - a) / a, 2),
            "pair_ratios": [round(y / x, 4) for x, y in zip(pairs_seen.a, pairs_seen.b)],
            "whole_run_s": {"off": round(median(t.seconds for t in off), 2),
                            "on": round(median(t.seconds for t in on), 2)}}
