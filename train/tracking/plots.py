"""YOLOv5's plots as the run's MLflow images, and its final validation as tables: the per-class metrics and the
confusion matrix. The training thread only puts a job in a queue; one background thread reads the files and sends
them through RunRecord (train/tracking/record.py), retrying through outages.

What YOLOv5 draws, and when it is picked up (nothing at all with train.noplots=true: YOLOv5 draws nothing):

- labels.jpg, labels_correlogram.jpg: before training (its Loggers' on_pretrain_routine_end), so at on_train_start,
  step 0; not again in a resumed run (train.resume, a retried Kubernetes attempt), nor when the run has them.
- train_batch0..2.jpg: the first three batches of a training from scratch, each drawn in a thread of YOLOv5's own
  (utils.plots.plot_images is @threaded): looked for at each epoch's end until all three were sent, step = that
  epoch. YOLOv5's plotting threads are waited for (bounded) before a job looks at the files, and a file is sent only
  once whole (its format's end marker written).
- nothing per epoch: train.py validates each epoch with plots=False, so no validation images, and val.py calls
  on_val_end only when it plots.
- after training, YOLOv5's final validation of best.pt (plots=True): PR/F1/P/R_curve.png (threaded; only when some
  prediction was right), confusion_matrix.png, val_batch{0..2}_labels.jpg and _pred.jpg (threaded), and
  results.png (YOLOv5's Loggers.on_train_end; ours is registered after it), step = the last epoch; its on_val_end
  gives the tables, per_class_metrics.json and confusion_matrix.json (MLflow's log_table: {"columns": [...],
  "data": [[...], ...]}).

Keys are the file stems ("PR_curve", "train_batch0"). At the end of the run `close` waits a bounded time (the
session's mlflow.delivery_timeout_s, shared with the metrics); what is not delivered by then is dropped with a line:
every file is in the run's training-output/ artifacts anyway. Nothing here raises into training.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import UnidentifiedImageError

START_IMAGES = ("labels.jpg", "labels_correlogram.jpg")
BATCH_IMAGES = ("train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg")
END_IMAGES = ("results.png", "confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png")
PER_CLASS_TABLE = "per_class_metrics.json"
CONFUSION_TABLE = "confusion_matrix.json"
PER_CLASS_COLUMNS = ("class", "images", "instances", "P", "R", "mAP50", "mAP50-95")
BACKGROUND = "background"

FILE_WAIT_S = 30.0  # how long a job waits for YOLOv5's plotting threads to finish its files
# YOLOv5's @threaded plotting functions (yolov5.utils.plots, yolov5.utils.metrics): Python names a thread started
# with a target and no name "Thread-<n> (<target's name>)".
_PLOTTERS = ("(plot_images)", "(plot_pr_curve)", "(plot_mc_curve)")
_POLL_S = 0.05
_MTIME_SLACK_S = 2.0  # a file older than this process's training (by more than this) is not this training's
_RETRY_WAIT_S = (1, 2, 5, 10)  # then every 10 s, as the metric spool (train/tracking/spool.py)
_KEY_BASE = 1 << 32  # (image in batch, class) as one integer

# A job: ("start",), ("batches", epoch) or ("end", epoch); None ends the thread.
Job = Optional[Tuple[Any, ...]]


class PlotHooks:
    """YOLOv5's training events for its plots and validation tables (register on RANK -1/0 only)."""

    def __init__(self, record, save_dir: Path, enabled: bool = True, resumed: bool = False,
                 file_wait_s: float = FILE_WAIT_S) -> None:
        self.record = record  # a RunRecord: log_image, log_table (and its client, to read the run's artifacts)
        self.save_dir = save_dir
        self.enabled = enabled  # mlflow.log_plots and not train.noplots
        self.resumed = resumed
        self.file_wait_s = file_wait_s
        self._since = time.time() - _MTIME_SLACK_S
        self._callbacks = None
        self._names: Dict[int, str] = {}
        # Images per class in the validation set: counted once, in the first validation (the set never changes).
        self._counting = False
        self._counted = False
        self._class_images = np.zeros(0, dtype=np.int64)
        self._val_images = 0
        self._val: Optional[Tuple[Any, ...]] = None  # the latest on_val_end's arguments
        # The background thread
        self._queue: "queue.Queue[Job]" = queue.Queue()
        self._abandoned = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._batches_left: Set[str] = set(BATCH_IMAGES)
        self._batches_queued = False
        self._left: List[str] = []  # what the job in hand still has to send
        self.images: List[Tuple[str, int]] = []  # (key, step) delivered
        self.tables: List[str] = []  # artifact files delivered
        self.dropped: List[str] = []  # "<what> (<why>)"
        self.failures = 0
        self.last_error = ""
        # The cost on the training thread, and the end of the run's wait
        self.epoch_s: List[float] = []  # per epoch: the validation hooks and the epoch's end
        self._epoch_acc = 0.0
        self.start_s = 0.0
        self.end_s = 0.0
        self.train_ended_at: Optional[float] = None
        self.done_at: Optional[float] = None

    # Registration --------------------------------------------------------------------------------------------------

    def register(self, callbacks) -> None:  # yolov5.utils.callbacks.Callbacks
        if not self.enabled:
            return
        self._callbacks = callbacks
        for hook in ("on_pretrain_routine_end", "on_train_start", "on_val_start", "on_val_batch_end", "on_val_end",
                     "on_fit_epoch_end"):
            callbacks.register_action(hook, name="mlflow-plots", callback=getattr(self, hook))
        self._thread = threading.Thread(target=self._run, name="mlflow-plots", daemon=True)
        self._thread.start()

    # The training thread: cheap, and never raising into training ----------------------------------------------------

    def on_pretrain_routine_end(self, labels=None, names=None, *args) -> None:
        self._names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
        self._class_images = np.zeros(len(self._names), dtype=np.int64)
        # Registered this late on purpose: YOLOv5's Loggers (added after our first hooks) draw results.png in their
        # on_train_end, which must run before ours.
        self._callbacks.register_action("on_train_end", name="mlflow-plots", callback=self.on_train_end)

    def on_train_start(self, *args) -> None:
        started = time.perf_counter()
        if not self.resumed:
            self._queue.put(("start",))
        self.start_s += time.perf_counter() - started

    def on_val_start(self, *args) -> None:
        started = time.perf_counter()
        if not self._counted:
            self._class_images[:] = 0
            self._val_images = 0
            self._counting = True
        self._epoch_acc += time.perf_counter() - started

    def on_val_batch_end(self, batch_i, im, targets, paths, shapes=None, out=None) -> None:
        if not self._counting:
            return
        started = time.perf_counter()
        try:
            self._val_images += len(paths)
            if len(targets) and len(self._class_images):
                pairs = targets[:, :2]  # (image in batch, class): a tensor, on the GPU when training is
                pairs = np.asarray(pairs.detach().cpu() if hasattr(pairs, "detach") else pairs).astype(np.int64)
                keys = np.unique(pairs[:, 0] * _KEY_BASE + pairs[:, 1])  # each class once per image
                self._class_images += np.bincount(keys % _KEY_BASE, minlength=len(self._class_images))[
                    :len(self._class_images)]
        except Exception as error:  # noqa: BLE001 - a count is not worth a training
            self._counting = False
            self._note_drop("the images column of the per-class table", error)
        self._epoch_acc += time.perf_counter() - started

    def on_val_end(self, nt, tp, fp, p, r, f1, ap, ap50, ap_class, confusion_matrix) -> None:
        started = time.perf_counter()
        self._val = (nt, p, r, ap50, ap, ap_class, confusion_matrix)  # references: val.py makes new ones each time
        self._count_done()
        self.end_s += time.perf_counter() - started

    def on_fit_epoch_end(self, vals=None, epoch: int = 0, *args) -> None:
        started = time.perf_counter()
        self._count_done()
        if self._batches_left and not self._batches_queued:
            self._batches_queued = True
            self._queue.put(("batches", int(epoch)))
        self.epoch_s.append(self._epoch_acc + time.perf_counter() - started)
        self._epoch_acc = 0.0

    def on_train_end(self, last=None, best=None, epoch: int = 0, results=None) -> None:
        started = time.perf_counter()
        self.train_ended_at = time.monotonic()
        self._queue.put(("end", int(epoch)))
        self.end_s += time.perf_counter() - started

    def _count_done(self) -> None:
        if self._counting:
            self._counting, self._counted = False, True

    # The end of the run ------------------------------------------------------------------------------------------

    def close(self, timeout_s: float, drop_waiting: bool = False) -> bool:
        """Wait up to `timeout_s` for everything queued to be sent (`drop_waiting`: only the job in hand, as after
        a failed training); then no more requests. Prints what was dropped, and a summary. Whether all went."""
        if self._thread is None:
            return True
        if drop_waiting:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self.dropped.append(f"{_describe(job)} (training did not end well)")
        self._queue.put(None)
        self._thread.join(max(timeout_s, 0))
        idle = not self._thread.is_alive()
        if not idle:
            self._abandoned.set()  # the request in flight, if any, is the last one
            left = list(self._left) + [_describe(job) for job in _drain(self._queue) if job is not None]
            self.dropped.extend(f"{what} (not delivered within {timeout_s:g} s: {self.last_error or 'still sending'})"
                                for what in left)
        if self.dropped:
            print(f"MLflow images and tables dropped (the files are in the run's training-output/ artifacts): "
                  f"{'; '.join(self.dropped)}")
        print(self.summary())
        return idle and not self.dropped

    def summary(self) -> str:
        """One line for the log: what was sent, the training thread's time in these hooks, the end's wait."""
        per_epoch = f"{statistics.median(self.epoch_s) * 1e6:.0f} µs per epoch (median)" if self.epoch_s else "-"
        after = ("" if self.train_ended_at is None or self.done_at is None
                 else f"; the last sent {self.done_at - self.train_ended_at:.1f} s after training ended")
        return (f"MLflow images and tables: {len(self.images)} images, {len(self.tables)} tables; on the training "
                f"thread {per_epoch}, {(self.start_s + self.end_s) * 1e3:.1f} ms at start and end{after}")

    # The background thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._abandoned.is_set():
            job = self._queue.get()
            if job is None:
                return
            try:
                if job[0] == "start":
                    self._join_plotters(time.monotonic() + self.file_wait_s)
                    self._send_images([(name, 0) for name in START_IMAGES])
                elif job[0] == "batches":
                    self._batches_queued = False
                    self._send_batches(job[1])
                elif job[0] == "end":
                    self._send_end(job[1])
                    self.done_at = time.monotonic()
            except Exception as error:  # noqa: BLE001 - never into training; a line at the end
                self._note_drop(_describe(job), error)
            finally:
                if not self._abandoned.is_set():
                    self._left = []  # else close() reports it

    def _send_batches(self, epoch: int) -> None:
        self._join_plotters(time.monotonic() + self.file_wait_s)
        self._batches_left.difference_update(self._send_images([(name, epoch) for name in sorted(self._batches_left)]))

    def _send_end(self, epoch: int) -> None:
        deadline = time.monotonic() + self.file_wait_s
        if self._val is not None:  # the final validation plotted
            self._left = [PER_CLASS_TABLE, CONFUSION_TABLE]
            for data, artifact_file in zip(self._tables(), (PER_CLASS_TABLE, CONFUSION_TABLE)):
                self._send_table(data, artifact_file)
                if self._abandoned.is_set():
                    return
                self._left.pop(0)
        self._join_plotters(deadline)
        batches = sorted(self.save_dir.glob("val_batch*.jpg"), key=lambda p: (len(p.name), p.name))
        self._send_images([(name, epoch) for name in (*END_IMAGES, *(p.name for p in batches))], deadline)

    def _send_images(self, images: Sequence[Tuple[str, int]], deadline: float = 0.0) -> List[str]:
        """Each image this training drew (a file written before it is not), once whole (waiting for that until
        `deadline`); the names of those sent or dropped."""
        self._left = [name for name, _ in images]
        handled = []
        existing = self._logged_keys() if any(self._fresh(self.save_dir / name) for name, _ in images) else set()
        for name, step in images:
            path, key = self.save_dir / name, Path(name).stem
            if self._fresh(path):
                handled.append(name)
                if (key, step) in existing:
                    pass  # an earlier attempt of this run sent it
                elif not self._whole(path, deadline):
                    self.dropped.append(f"{name} (still being written after {self.file_wait_s:g} s)")
                else:
                    try:
                        if self._deliver(lambda: self.record.log_image(path, key, step)):
                            self.images.append((key, step))
                    except _Undeliverable as error:
                        self._note_drop(name, error)
                    if self._abandoned.is_set():
                        return handled
            self._left.pop(0)
        return handled

    def _send_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        # MLflow appends to a table the run already has: a retry checks whether the failed try wrote it.
        try:
            if self._deliver(lambda: self.record.log_table(data, artifact_file),
                             done=lambda: self._has_artifact(artifact_file)):
                self.tables.append(artifact_file)
        except _Undeliverable as error:
            self._note_drop(artifact_file, error)

    def _deliver(self, send: Callable[[], None], done: Callable[[], bool] = lambda: False) -> bool:
        """`send`, retried through outages until it succeeds (True) or the session gives up on this thread."""
        attempt = 0
        while not self._abandoned.is_set():
            try:
                if attempt == 0 or not done():
                    send()
                return True
            except (ValueError, TypeError, UnidentifiedImageError) as error:  # no outage: no retry would do
                raise _Undeliverable(error) from error
            except Exception as error:  # noqa: BLE001 - an outage of any kind: retry
                self.failures += 1
                self.last_error = _one_line(error)
                if self._abandoned.wait(_RETRY_WAIT_S[min(attempt, len(_RETRY_WAIT_S) - 1)]):
                    break
                attempt += 1
        return False

    def _fresh(self, path: Path) -> bool:
        """Drawn by this training (not left in the folder by an earlier one)."""
        try:
            return path.stat().st_mtime >= self._since
        except FileNotFoundError:
            return False

    def _whole(self, path: Path, deadline: float) -> bool:
        """Completely written, waiting until `deadline` (a plotting thread may still write it)."""
        while not _complete(path):
            if time.monotonic() >= deadline or self._abandoned.wait(_POLL_S):
                return False
        return True

    def _join_plotters(self, deadline: float) -> None:
        """Wait (until `deadline`) for YOLOv5's plotting threads: then what exists of their files is whole."""
        for thread in threading.enumerate():
            if thread.name.endswith(_PLOTTERS) and thread is not threading.current_thread():
                while True:
                    try:
                        thread.join(max(deadline - time.monotonic(), 0))
                        break
                    except RuntimeError:  # listed while starting: joinable in a moment
                        if time.monotonic() >= deadline or self._abandoned.wait(_POLL_S / 10):
                            break

    def _logged_keys(self) -> Set[Tuple[str, int]]:
        """(key, step) of the images the run already has (an earlier attempt's): not sent again."""
        try:
            listed = self.record.client.list_artifacts(self.record.run_id, "images")
        except Exception:  # noqa: BLE001 - unknown: send (a duplicate at worst)
            return set()
        found = set()
        for item in listed:
            parts = item.path.rsplit("/", 1)[-1].split("+")
            if len(parts) > 2 and parts[1] == "step" and parts[2].isdigit():
                found.add((parts[0], int(parts[2])))
        return found

    def _has_artifact(self, artifact_file: str) -> bool:
        return any(item.path == artifact_file for item in self.record.client.list_artifacts(self.record.run_id))

    def _note_drop(self, what: str, error: BaseException) -> None:
        cause = error.__cause__ if isinstance(error, _Undeliverable) and error.__cause__ else error
        self.dropped.append(f"{what} ({_one_line(cause)})")

    def _tables(self) -> Tuple[Dict[str, List[Any]], Dict[str, List[Any]]]:
        nt, p, r, ap50, ap, ap_class, confusion_matrix = self._val
        return (per_class_table(self._names, nt, p, r, ap50, ap, ap_class, self._class_images if self._counted
                                else None, self._val_images if self._counted else None),
                confusion_table(self._names, confusion_matrix.matrix))


class _Undeliverable(Exception):
    """A request that no retry would make succeed."""


# The tables ------------------------------------------------------------------------------------------------------

def per_class_table(names: Mapping[int, str], nt, p, r, ap50, ap, ap_class, class_images: Optional[np.ndarray],
                    images: Optional[int]) -> Dict[str, List[Any]]:
    """val.py's printout as columns: an "all" row, then each class with labels. `images`: the validation images
    (with a class: those holding it; None when not counted). Metrics of a class without a true positive are 0,
    as YOLOv5 reports them."""
    nt = np.asarray(nt).astype(np.int64)
    index = {int(c): i for i, c in enumerate(np.asarray(ap_class).reshape(-1))}

    def metric(values, i: Optional[int]) -> float:
        if not index:
            return 0.0
        values = np.asarray(values, dtype=float).reshape(-1)
        return float(values.mean() if i is None else values[i])

    rows = [["all", images, int(nt.sum()), metric(p, None), metric(r, None), metric(ap50, None), metric(ap, None)]]
    for c in range(len(nt)):
        if nt[c] == 0 and c not in index:
            continue
        i = index.get(c)
        held = None if class_images is None or c >= len(class_images) else int(class_images[c])
        rows.append([names.get(c, str(c)), held, int(nt[c])] + [metric(v, i) if i is not None else 0.0
                                                                 for v in (p, r, ap50, ap)])
    return {column: [row[k] for row in rows] for k, column in enumerate(PER_CLASS_COLUMNS)}


def confusion_table(names: Mapping[int, str], matrix) -> Dict[str, List[Any]]:
    """YOLOv5's ConfusionMatrix.matrix ((nc+1) x (nc+1) counts; rows: predicted, columns: true; the last of each:
    background) with its labels: a "predicted" column, then a "true <class>" column per class and background."""
    matrix = np.asarray(matrix)
    labels = _unique([names.get(c, str(c)) for c in range(matrix.shape[0] - 1)] + [BACKGROUND])
    table: Dict[str, List[Any]] = {"predicted": labels}
    for j, label in enumerate(labels):
        table[f"true {label}"] = [int(round(v)) for v in matrix[:, j]]
    return table


def _unique(labels: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    result = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        result.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return result


# Files -----------------------------------------------------------------------------------------------------------

_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}


def _complete(path: Path) -> bool:
    """Whether the file ends with its format's end marker (PIL writes it last): cheap, no decoding."""
    marker = _END_MARKERS.get(path.suffix.lower(), b"")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if size < len(marker) or size == 0:
                return False
            f.seek(size - len(marker))
            return f.read() == marker
    except OSError:
        return False


def _describe(job: Tuple[Any, ...]) -> str:
    if job[0] == "start":
        return ", ".join(START_IMAGES)
    if job[0] == "batches":
        return f"train_batch*.jpg (epoch {job[1]})"
    return f"{PER_CLASS_TABLE}, {CONFUSION_TABLE} and the end-of-training images (epoch {job[1]})"


def _drain(jobs: "queue.Queue[Job]") -> List[Job]:
    drained = []
    while True:
        try:
            drained.append(jobs.get_nowait())
        except queue.Empty:
            return drained


def _one_line(error: BaseException) -> str:
    from train.redact import redact

    text = str(error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)
