"""The resume checkpoint on its way to the artifact store during training, so a pod lost without a word (SIGKILL:
node loss, out of memory) is continued from it by the retried pod instead of from nothing.

At an epoch's end, right after YOLOv5 writes last.pt (its `on_model_save` event), an upload is due when
`mlflow.checkpoint_every_epochs` epochs or `mlflow.checkpoint_every_minutes` minutes have passed since the last
one (0 turns an interval off). The training thread only copies the files into a snapshot folder of their own
(milliseconds); one background thread uploads the newest snapshot to the paths the end-of-run upload uses. A newer
snapshot replaces one still waiting, so an outage never piles up a queue: the thread retries the file it is on
until the server takes it, or until a newer snapshot makes it moot. results.csv, train.log and best.pt go before
last.pt, so a kill between two files never leaves a checkpoint newer than the rows and the best weights beside it
(resuming drops rows newer than the checkpoint). The run's tag `checkpoint_epoch` then says which epoch the stored
last.pt holds.

Before the end-of-run upload, `stop` drops what waits and gives the one in flight a bounded time: the uploader
never writes after that, so no stale checkpoint lands over the final one.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from train.tracking.checkpoint_models import BEST, LAST, CheckpointModel, CheckpointModels

_RETRY_WAIT_S = (1, 2, 5, 10)  # then every 10 s, as the metric spool (train/tracking/spool.py)
STAGING = ".checkpoint-uploads"  # in the run folder, beside (never inside) YOLOv5's save_dir, which is uploaded whole


@dataclass
class Snapshot:
    """Copies of one epoch's files, each with the artifact folder it goes to, in upload order."""
    epoch: int
    folder: Path
    files: List[Tuple[Path, str]] = field(default_factory=list)
    best: Optional[Tuple[int, int]] = None  # the identity of the best.pt copied in, if any
    models: List[CheckpointModel] = field(default_factory=list)  # the copies to log as LoggedModels


class Transport:
    """Where snapshots go: the run's artifacts and a tag (train/tracking/record.py's RunRecord), and with `models`
    (train/tracking/checkpoint_models.py) its weights as LoggedModels."""

    def __init__(self, record, models: Optional[CheckpointModels] = None) -> None:
        self.record = record
        self.models = models

    def upload(self, path: Path, artifact_dir: str) -> None:
        self.record.log_file(path, artifact_dir)

    def uploaded(self, epoch: int) -> None:
        self.record.set_tags({"checkpoint_epoch": str(epoch)})


class CheckpointUploader:
    """YOLOv5's `on_model_save` hook: snapshots of the resume checkpoint, uploaded in the background, newest only."""

    def __init__(self, transport, save_dir: Path, log_path: Path, staging: Path, every_epochs: int,
                 every_minutes: float, start_epoch: int = 0, clock: Callable[[], float] = time.monotonic,
                 metrics_delivered: Callable[[int], bool] = lambda epoch: True) -> None:
        self.transport = transport
        # Whether the server holds every epoch's metrics up to one (MetricSpool.delivered_through): a checkpoint never
        # lands before its epoch's metrics, which a resume from it would not log again.
        self._metrics_delivered = metrics_delivered
        self.save_dir, self.log_path, self.staging = save_dir, log_path, staging
        self.every_epochs, self.every_minutes = every_epochs, every_minutes
        self._clock = clock
        self._last_epoch = start_epoch - 1  # the reference of the epoch interval: the last snapshot's epoch
        self._last_time = clock()  # and of the minutes: the last snapshot's time (at first: training's start)
        # best.pt's (mtime_ns, size) as last uploaded: a snapshot dropped before its upload leaves it to the next one
        self._best_sent: Optional[Tuple[int, int]] = None
        self._best_epoch: Optional[int] = None  # the epoch best.pt holds (the last one whose fitness was the best)
        self._cond = threading.Condition()
        self._waiting: Optional[Snapshot] = None
        self._in_flight: Optional[Snapshot] = None
        self._stopped = False  # the one in flight is abandoned after its current request
        self._closed = False  # no more snapshots; the one in flight may finish
        self._thread: Optional[threading.Thread] = None
        self.staged = 0  # snapshots taken
        self.staging_s: List[float] = []  # the training thread's time per snapshot
        self.staged_bytes: List[int] = []
        self.uploads = 0  # snapshots wholly uploaded
        self.uploaded_epoch: Optional[int] = None  # the epoch of the last snapshot wholly uploaded
        self.failures = 0
        self.last_error = ""

    @property
    def enabled(self) -> bool:
        return self.every_epochs > 0 or self.every_minutes > 0

    def register(self, callbacks) -> None:  # yolov5.utils.callbacks.Callbacks
        # After CheckpointSafeInterrupts' on_model_save: an interrupt deferred during the save is raised before
        # this runs, and the end-of-run upload takes the checkpoint instead.
        if self.enabled:
            callbacks.register_action("on_model_save", name="mlflow-checkpoint", callback=self.on_model_save)

    def due(self, epoch: int) -> bool:
        """Whether either interval has passed since the last snapshot (at first: since training started)."""
        by_epochs = self.every_epochs > 0 and epoch - self._last_epoch >= self.every_epochs
        by_minutes = self.every_minutes > 0 and self._clock() - self._last_time >= 60 * self.every_minutes
        return by_epochs or by_minutes

    def on_model_save(self, last, epoch: int, final_epoch, best_fitness, fi) -> None:
        if best_fitness == fi:  # YOLOv5's own test for writing best.pt at this epoch
            self._best_epoch = epoch
        if self._closed or not self.due(epoch):
            return
        started = time.perf_counter()
        try:
            snapshot = self.snapshot(epoch)
        except OSError as error:  # a full disk: training goes on, the next due epoch tries again
            print(f"WARNING: checkpoint upload skipped at epoch {epoch}: cannot copy the files ({error})")
            return
        self.staging_s.append(time.perf_counter() - started)
        self.staged_bytes.append(sum(path.stat().st_size for path, _ in snapshot.files))
        self._last_epoch, self._last_time = epoch, self._clock()
        self.offer(snapshot)

    def snapshot(self, epoch: int) -> Snapshot:
        """Copies of results.csv, train.log, best.pt (when it changed since the last snapshot) and last.pt."""
        folder = self.staging / f"epoch-{epoch:06d}-{self.staged}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.staged += 1
        snapshot = Snapshot(epoch, folder)
        weights = self.save_dir / "weights"
        best = weights / "best.pt"
        best_id = _identity(best)
        sources = [(self.save_dir / "results.csv", "training-output"), (self.log_path, "logs")]
        if best_id is not None and best_id != self._best_sent:
            sources.append((best, "training-output/weights"))
            snapshot.best = best_id
        sources.append((weights / "last.pt", "training-output/weights"))
        for source, artifact_dir in sources:
            if source.is_file():
                target = folder / artifact_dir.replace("/", "_") / source.name
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(source, target)  # a copy, not a link: YOLOv5 rewrites last.pt in place
                snapshot.files.append((target, artifact_dir))
                if source.name == "best.pt" and self._best_epoch is not None:
                    snapshot.models.append(CheckpointModel(BEST, target, self._best_epoch))
                elif source.name == "last.pt":
                    snapshot.models.append(CheckpointModel(LAST, target, epoch))
        return snapshot

    def offer(self, snapshot: Snapshot) -> None:
        """`snapshot` is the next to upload; one still waiting is dropped (latest wins)."""
        with self._cond:
            if self._closed:
                dropped = snapshot
            else:
                dropped, self._waiting = self._waiting, snapshot
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mlflow-checkpoint-upload", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        if dropped is not None:
            self._discard(dropped)

    def stop(self, timeout_s: float) -> bool:
        """No more uploads: what waits is dropped; one in flight gets up to `timeout_s`, then is abandoned (it writes
        nothing after its current request). Whether the uploader is idle now."""
        self.cancel()
        return self.join(timeout_s)

    def close(self) -> None:
        """No more snapshots: what waits is dropped; the one in flight, if any, goes on (`join` waits for it)."""
        with self._cond:
            self._closed = True
            dropped, self._waiting = self._waiting, None
            self._cond.notify_all()
        if dropped is not None:
            self._discard(dropped)

    def cancel(self) -> None:
        """`close`, and the one in flight abandoned after its current request (its LoggedModels marked FAILED)."""
        with self._cond:
            self._stopped = self._closed = True
            dropped, self._waiting = self._waiting, None
            self._cond.notify_all()
        if dropped is not None:
            self._discard(dropped)

    def join(self, timeout_s: float) -> bool:
        if self._thread is not None:
            self._thread.join(max(timeout_s, 0))
        idle = self._thread is None or not self._thread.is_alive()
        if idle:
            shutil.rmtree(self.staging, ignore_errors=True)
        return idle

    def summary(self) -> str:
        """One line for the log: snapshots taken (their median copy time and size), and how many were uploaded."""
        if not self.staging_s:
            return "Checkpoint uploads during training: none"
        ms = statistics.median(self.staging_s) * 1000
        mb = statistics.median(self.staged_bytes) / 1e6
        last = "" if self.uploaded_epoch is None else f", the last at epoch {self.uploaded_epoch}"
        return (f"Checkpoint uploads during training: {len(self.staging_s)} snapshots ({ms:.1f} ms each on the "
                f"training thread, {mb:.1f} MB, medians), {self.uploads} uploaded{last}; newer ones replace any "
                f"still waiting")

    # The background thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._closed:
                    self._cond.wait()
                if self._waiting is None or self._stopped:
                    return
                snapshot, self._waiting = self._waiting, None
                self._in_flight = snapshot
            try:
                if self._send(snapshot):
                    self.uploaded_epoch = snapshot.epoch
                    self.uploads += 1
                    if snapshot.best is not None:
                        self._best_sent = snapshot.best
            finally:
                with self._cond:
                    self._in_flight = None
                self._discard(snapshot)

    def _moot(self) -> bool:
        """Stopped, or a newer snapshot waits: the one in hand is not worth another request."""
        with self._cond:
            return self._stopped or self._waiting is not None

    def _send(self, snapshot: Snapshot) -> bool:
        """Once the epoch's metrics are on the server: every file, then the tag, each retried through outages;
        False when given up as moot."""
        while not self._metrics_delivered(snapshot.epoch):
            if self._moot():
                return False
            with self._cond:
                self._cond.wait(0.05)
        steps: List[Callable[[], None]] = [
            (lambda p=path, d=artifact_dir: self.transport.upload(p, d)) for path, artifact_dir in snapshot.files]
        steps.append(lambda: self.transport.uploaded(snapshot.epoch))
        models = getattr(self.transport, "models", None)
        pending: List[str] = []  # LoggedModels created and not yet READY
        if models is not None:
            for model in snapshot.models:
                steps.extend(models.steps(model, pending))
        try:
            return self._take(steps)
        finally:
            if pending:
                models.give_up(pending)

    def _take(self, steps: List[Callable[[], None]]) -> bool:
        """Each step in turn, retried through outages; False when given up as moot or stopped."""
        for step in steps:
            attempt = 0
            while True:
                with self._cond:
                    if self._stopped:
                        return False
                try:
                    step()
                    break
                except Exception as exc:  # noqa: BLE001 - an outage of any kind: retry, unless a newer one waits
                    self.failures += 1
                    text = str(exc).strip()
                    self.last_error = text.splitlines()[0] if text else type(exc).__name__
                    if self._moot():
                        return False
                    with self._cond:
                        self._cond.wait(_RETRY_WAIT_S[min(attempt, len(_RETRY_WAIT_S) - 1)])
                    attempt += 1
                    if self._moot():
                        return False
        return True

    @staticmethod
    def _discard(snapshot: Snapshot) -> None:
        shutil.rmtree(snapshot.folder, ignore_errors=True)


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size
