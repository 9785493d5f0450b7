"""What every benchmark shares: A/B pairs run interleaved, medians, the servers, one timed training.

The machines are shared and noisy, so nothing here is judged by a lone absolute time: each figure
is a ratio of medians over pairs measured side by side (A, B, A, B, ...), with the order inside a
pair alternating so a warming cache or a neighbour's burst does not always favour one side.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence

from testbed.servers import ManagedTrackingServer, TrackingServer, client_env, s3_server  # noqa: F401
from train.data.synthetic import SyntheticSpec, generate


@dataclass
class Pairs:
    """Measurements of A (the baseline) and B, one list each, in pair order."""
    a: List[float] = field(default_factory=list)
    b: List[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.b) / statistics.median(self.a)

    def summary(self) -> Dict[str, object]:
        return {"pairs": len(self.a), "median_a_s": round(statistics.median(self.a), 3),
                "median_b_s": round(statistics.median(self.b), 3), "ratio": round(self.ratio, 4),
                "a_s": [round(x, 3) for x in self.a], "b_s": [round(x, 3) for x in self.b]}


def interleaved(pairs: int, run_a: Callable[[], float], run_b: Callable[[], float]) -> Pairs:
    result = Pairs()
    for i in range(pairs):
        order = [(result.a, run_a), (result.b, run_b)]
        for into, run in (order if i % 2 == 0 else order[::-1]):
            into.append(run())
    return result


@contextmanager
def servers(workdir: Path) -> Iterator[TrackingServer]:
    """moto's S3 server and an `mlflow server` (SQLite, proxied artifacts), as the tests and deploy/ run them."""
    workdir.mkdir(parents=True, exist_ok=True)
    with s3_server(workdir) as endpoint:
        server = ManagedTrackingServer(workdir, f"sqlite:///{workdir / 'mlflow.db'}", endpoint)
        try:
            yield server.start()
        finally:
            server.stop()


@dataclass
class Datasets:
    """One set of synthetic images in two layouts: the synthetic one (3 classes) and coco128's (80 classes)."""
    three_classes: Path
    eighty_classes: Path
    cache_dir: Path


def datasets(workdir: Path, image_size: int) -> Datasets:
    """3 classes: 32 training and 8 validation images. 80 classes: coco128's layout, which needs 128 images and
    validates on them (its yaml names train2017 for both), the same synthetic shapes under coco's 80 names."""
    cache_dir = workdir / "cache"
    three = generate(SyntheticSpec(train_images=32, val_images=8, image_size=image_size, seed=0), cache_dir)
    eighty_source = generate(SyntheticSpec(train_images=128, val_images=1, image_size=image_size, seed=0), cache_dir)
    eighty = workdir / "coco128-layout"
    shutil.rmtree(eighty, ignore_errors=True)
    for kind in ("images", "labels"):
        (eighty / kind).mkdir(parents=True)
        (eighty / kind / "train2017").symlink_to(eighty_source / kind / "train")
    return Datasets(three, eighty, cache_dir)


def data_overrides(data: Datasets, nc: int) -> List[str]:
    if nc == 3:
        return [f"data.root={data.three_classes}"]
    return ["data=coco128", f"data.root={data.eighty_classes}"]


@dataclass
class Timed:
    """One process as seen from outside: wall-clock times of its start and exit, and of each epoch's end
    (each results.csv row as it appeared: YOLOv5 writes one when an epoch ends, tracked or not)."""
    started_at: float
    exited_at: float
    epoch_ends: List[float]
    folder: Path  # where it ran: Hydra's outputs/ (or YOLOv5's project folder) is under it

    @property
    def seconds(self) -> float:
        return self.exited_at - self.started_at

    @property
    def end_s(self) -> float:
        """The last epoch's end to exit: final validation, and with tracking the uploads and the model."""
        return self.exited_at - self.epoch_ends[-1]

    @property
    def per_epoch_s(self) -> float:
        """The first epoch's end to the last's, per epoch between: the run's start and end left out."""
        return (self.epoch_ends[-1] - self.epoch_ends[0]) / (len(self.epoch_ends) - 1)

    def as_if(self, epochs: int) -> float:
        """Start to exit of the same run stopped after `epochs`: the start and epochs as measured, then its end."""
        return self.epoch_ends[epochs - 1] - self.started_at + self.end_s


class _EpochWatch:
    """Polls a run folder for YOLOv5's results.csv from another thread and notes when each row appears."""

    def __init__(self, folder: Path, period_s: float = 0.02) -> None:
        self.folder, self.period_s = folder, period_s
        self.ends: List[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        found: Path | None = None
        size = -1
        while not self._done.wait(self.period_s):
            if found is None:
                found = next(self.folder.glob("**/yolov5/results.csv"), None)
                continue
            if found.stat().st_size != size:
                size = found.stat().st_size
                rows = len(found.read_text().splitlines()) - 1
                self.ends.extend([time.time()] * (rows - len(self.ends)))

    def __enter__(self) -> "_EpochWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def run_timed(argv: Sequence[str], cwd: Path, env: Dict[str, str], timeout_s: float = 900) -> Timed:
    """One process, start to exit, its epochs watched (a run folder of its own: `cwd`); fails loudly if it does."""
    cwd.mkdir(parents=True, exist_ok=True)
    with _EpochWatch(cwd) as watch:
        started = time.time()
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
        exited = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return Timed(started, exited, watch.ends or [exited], cwd)


def session_cpu_s(leader: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of `leader`'s session: a server and its
    workers, which testbed/servers.py starts in a session of their own."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state is fields[0]
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == leader:  # session id
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def train_argv(*overrides: str) -> List[str]:
    return [sys.executable, "-m", "train", *overrides]
