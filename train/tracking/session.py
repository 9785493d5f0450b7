"""A tracked training's life: open the run, record where it came from, train, finish the record, log the model.

Config in, run record out. Whatever fails once the run is open is recorded in it (run.active_run
decides the end state); the log and every output are uploaded on every path out of training.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import mlflow

from train import yolo
from train.console import ConsoleTee
from train.errors import RecordIncomplete, TrackingUnavailable
from train.hints import python_command
from train.interrupts import CheckpointSafeInterrupts
from train.model.weights import StartingWeights
from train.redact import redact, without_credentials
from train.tracking import attempts, lineage, resume
from train.tracking.background import InBackground
from train.tracking.checkpoint_models import CheckpointModels, PendingModel
from train.tracking.checkpoints import STAGING, CheckpointUploader, Transport
from train.tracking.hooks import MlflowHooks, last_row_metrics
from train.tracking.plots import PlotHooks
from train.tracking.names import sanitize_key
from train.tracking.record import RunRecord
from train.tracking.run import (active_run, all_params, check_artifacts_writable, end_status, one_line,
                                upload_outputs)
from train.tracking.spool import MetricSpool, PendingRecord

START_RECORDED = "params_and_lineage_recorded"  # tag: the run's params and lineage landed (a resume need not redo them)


@dataclass
class Session:
    """One tracked training: the resolved config and where it runs."""

    config: Mapping[str, Any]
    data_yaml: Path
    out_dir: Path
    tracking_uri: str
    tags: Dict[str, str]  # the run's own tags (data, device, overrides, sweep nesting, ...)
    run_name: str
    resume_run_id: Optional[str] = None
    weights: Optional[StartingWeights] = None  # the starting checkpoint, fetched and checked
    run_id: str = ""
    last_metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def save_dir(self) -> Path:
        return yolo.save_dir(self.out_dir)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "train.log"

    def has_checkpoint(self) -> bool:
        """Whether a resume would find a checkpoint (YOLOv5 writes last.pt at each epoch's end)."""
        return (self.save_dir / "weights" / "last.pt").is_file()


def train_tracked(session: Session, interrupts: CheckpointSafeInterrupts) -> Dict[str, float]:
    """Train inside an MLflow run; the last epoch's metrics. The run's end state is honest on every path."""
    config = session.config
    run_id = session.resume_run_id or os.environ.get("MLFLOW_RUN_ID") or None
    # Read before the run is opened, which sets it RUNNING: how the previous attempt left it.
    before = attempts.Before.read(session.tracking_uri, run_id) if run_id else None
    with active_run(session.tracking_uri, config["mlflow"]["experiment_name"], session.run_name, session.tags,
                    run_id, config["mlflow"]["system_metrics"]) as run:
        session.run_id = run.info.run_id
        record = RunRecord(mlflow.MlflowClient(), session.run_id)
        weights_path = str(session.weights.path) if session.weights else ""
        opt = yolo.build_opt(config, session.data_yaml, session.out_dir, weights_path)  # inside the run: failures are recorded
        checkpoint: Optional[resume.Checkpoint] = None
        start_epoch = 0
        if session.resume_run_id:
            checkpoint = resume.fetch(session.tracking_uri, session.run_id, session.save_dir, session.log_path,
                                      opt.epochs)
            start_epoch = opt.epochs if checkpoint.finished else yolo.continue_from(opt, checkpoint.path,
                                                                                   checkpoint.epoch)
            record.set_tags({"resumed_at_epoch": str(start_epoch)})
        start = _record_start(record, config, session, resumed=checkpoint is not None)
        record.set_tags(attempts.tags(before, checkpoint is not None, checkpoint.epoch if checkpoint else None,
                                      os.environ))
        done = checkpoint is not None and checkpoint.finished
        spool = MetricSpool(session.tracking_uri, session.run_id)
        hooks = MlflowHooks(spool, session.save_dir)
        plots = PlotHooks(record, session.save_dir, config["mlflow"]["log_plots"] and not config["train"]["noplots"],
                          resumed=checkpoint is not None)
        models = CheckpointModels(record, run.info.experiment_id, config["train"]["imgsz"], spool.points,
                                  Path(config["paths"]["cache_dir"]))
        uploader = CheckpointUploader(Transport(record, models if config["mlflow"]["log_model"] else None),
                                      session.save_dir, session.log_path, session.out_dir / STAGING,
                                      config["mlflow"]["checkpoint_every_epochs"],
                                      config["mlflow"]["checkpoint_every_minutes"], start_epoch,
                                      metrics_delivered=spool.delivered_through)
        outcome: Optional[BaseException] = None
        final_model: Optional[FinalModel] = None
        try:
            with ConsoleTee(session.log_path):
                print(f"MLflow run {session.run_id} in experiment {run.info.experiment_id} at "
                      f"{redact(session.tracking_uri)}")
                try:
                    if done:
                        _finish_training(session.save_dir, checkpoint.epoch, opt.epochs)
                        hooks.last_metrics = last_row_metrics(session.save_dir / "results.csv")
                    else:
                        yolo.train(opt, interrupts, hooks, uploader, plots)
                    if config["mlflow"]["log_model"]:
                        final_model = FinalModel(session, models, spool)  # beside the end-of-run uploads below
                except BaseException as error:
                    traceback.print_exc()  # into train.log, which is uploaded below
                    outcome = error
                    raise
                finally:
                    interrupts.training_ended()
                    # No more snapshots. The one in flight, if any, is waited for below, unless interrupted: a pod's
                    # grace period is for the end-of-run upload.
                    if outcome is None:
                        uploader.close()
                    else:
                        uploader.cancel()
                    if uploader.enabled and not done:
                        print(uploader.summary())
        finally:
            try:
                _finish_record(spool, record, session, config["mlflow"]["delivery_timeout_s"], outcome, uploader,
                               start, plots)
                if final_model is not None:
                    # READY only now, the run's record complete; registered after it: the objective is there.
                    _register(session, final_model.ready())
            except BaseException:
                if final_model is not None:
                    final_model.abandon()  # the run is not FINISHED: its model is not READY
                raise
        session.last_metrics = hooks.last_metrics
    return session.last_metrics


def _record_start(record: RunRecord, config: Mapping[str, Any], session: Session, resumed: bool) -> InBackground:
    """The resolved config first (it proves the artifact store takes writes), then, while YOLOv5 starts, params and
    lineage (scanning the installed packages alone takes half a second), then the tag saying they landed. A resumed
    run records them only if its first attempt died before they did (the config is there: it resumed from it)."""
    if resumed:
        if record.client.get_run(session.run_id).data.tags.get(START_RECORDED) == "true":
            return InBackground("mlflow-start-record", [])
    else:
        check_artifacts_writable(record, config, config["mlflow"]["startup_timeout_s"])

    def params() -> None:
        # `mlflow run` logs its -P parameters first, some under train_wrapper.py's flat names (epochs, imgsz, ...):
        # params are write-once, so those stay as given; the dotted keys hold the resolved values.
        logged = record.client.get_run(session.run_id).data.params
        record.log_params({k: v for k, v in all_params(config).items() if k not in logged})

    return InBackground("mlflow-start-record", [params, lambda: lineage.record(record, config, session.data_yaml),
                                                lambda: record.set_tags({START_RECORDED: "true"})])


def _finish_training(save_dir: Path, trained_epoch: int, epochs: int) -> None:
    """A resumed run whose checkpoint already holds its last epoch (killed during YOLOv5's final validation): what
    YOLOv5 does after its last epoch that the record needs, without training again. YOLOv5 itself cannot resume
    it (its loop would be empty, and a stripped checkpoint is refused)."""
    print(f"The checkpoint holds the last epoch ({trained_epoch} of 0-{epochs - 1}): nothing left to train; "
          f"finishing the record (without YOLOv5's final validation of best.pt and its plots)")
    from yolov5.utils.general import strip_optimizer

    for name in ("last.pt", "best.pt"):  # as YOLOv5 leaves them at the end: EMA weights, no optimizer, epoch -1
        path = save_dir / "weights" / name
        if path.is_file() and yolo.checkpoint_epoch(path) != -1:
            strip_optimizer(path)


def _finish_record(spool: MetricSpool, record: RunRecord, session: Session, timeout_s: float,
                   outcome: Optional[BaseException], uploader: Optional[CheckpointUploader] = None,
                   start: Optional[InBackground] = None, plots: Optional[PlotHooks] = None) -> None:
    """Every metric delivered and every output uploaded, or RecordIncomplete with the rest kept locally.

    The checkpoint uploader is stopped first (within the same `timeout_s`), so no upload of its lands after these.
    A start of the record (params, lineage) that never landed fails a run that would have FINISHED: its record
    could not reproduce it."""
    deadline = time.monotonic() + timeout_s
    if uploader is not None:
        uploader.close()  # drops what waits; the one in flight goes on
    undelivered = spool.close(timeout_s)
    if uploader is not None and not uploader.join(deadline - time.monotonic()):
        uploader.cancel()  # it writes nothing after its current request
        print(f"The checkpoint upload in flight did not end within mlflow.delivery_timeout_s ({timeout_s:g} s): "
              f"abandoned ({uploader.last_error or 'still sending'})")
    not_started = start.wait(deadline - time.monotonic()) if start is not None else None
    if not_started:
        print(f"The run's params and lineage were not recorded: {not_started}")
    # Without its params and lineage the record cannot reproduce the run, whatever `sync` delivers later.
    failure = outcome if outcome is not None or not not_started else TrackingUnavailable(not_started)
    pending = PendingRecord(tracking_uri=without_credentials(session.tracking_uri), run_id=session.run_id,
                            status=end_status(failure), epochs=undelivered)
    if plots is not None and outcome is not None:
        plots.close(0, drop_waiting=True)  # interrupted or failed: the grace period is for the outputs
    if not undelivered:
        try:
            upload_outputs(record, session.out_dir, session.save_dir, session.log_path)
        except Exception as error:  # noqa: BLE001 - the server went away between the metrics and the files
            reason = f"uploading the outputs failed: {one_line(error)}"
        else:
            if plots is not None and outcome is None:
                # After the outputs, so the images' thread sent its last plots meanwhile; what is late is dropped
                # (the files are in training-output/).
                plots.close(deadline - time.monotonic())
            if not_started and outcome is None:
                raise TrackingUnavailable(f"the run's params and lineage were not recorded within "
                                          f"mlflow.delivery_timeout_s ({timeout_s:g} s): {not_started}")
            return
    else:
        reason = f"{len(undelivered)} epochs of metrics were not delivered ({spool.last_error})"
    if plots is not None and outcome is None:
        plots.close(0)  # the server is away: no more requests
    path = pending.save(session.out_dir)
    raise RecordIncomplete(f"the tracking server did not take the whole record: {reason}; it is kept in {path}: "
                           f"deliver it with `{python_command(f'-m train.tracking.sync {session.out_dir}')}`") from outcome


class FinalModel:
    """best.pt logged as the run's model `model` on a thread of its own, while the end of the record (metrics,
    outputs, images) is sent: the two are each a few tenths of a second of requests, and neither needs the other.
    It waits for the metrics of best.pt's epoch to be on the server first: they are linked to the model. The model
    stays PENDING until `ready` (the run's record is complete), or is `abandon`ed (FAILED): READY never stands for a
    run that did not finish."""

    def __init__(self, session: Session, models: CheckpointModels, spool: MetricSpool) -> None:
        self._session, self._models, self._spool = session, models, spool
        self._pending: Optional[PendingModel] = None
        self._error: Optional[BaseException] = None
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._log, name="mlflow-final-model", daemon=True)
        self._thread.start()

    def _log(self) -> None:
        from train.model.registry import example_image
        from train.tracking.checkpoint_models import FINAL, CheckpointModel

        session = self._session
        try:
            step = yolo.best_epoch(session.save_dir / "results.csv")
            deadline = time.monotonic() + session.config["mlflow"]["delivery_timeout_s"]
            while not self._spool.delivered_through(step) and time.monotonic() < deadline:
                if self._abandoned.wait(0.05):
                    return
            best = CheckpointModel(FINAL, session.save_dir / "weights" / "best.pt", step,
                                   example_image(session.data_yaml))
            self._pending = self._models.log_pending(best, self._abandoned)
            if self._abandoned.is_set():  # while its last request was in flight
                self._pending.abandon()
        except BaseException as error:  # noqa: BLE001 - raised again on the main thread, by ready()
            self._error = error

    def ready(self) -> str:
        """The model READY, once its logging is done; its URI. What failed in its logging is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._pending.ready() if self._pending is not None else ""

    def abandon(self, timeout_s: float = 2) -> None:
        """No further request for the model: the one in flight gets `timeout_s`, then the model is set FAILED (or,
        where the server does not answer, or the process ends first, left PENDING); one READY already stays so."""
        self._abandoned.set()
        self._thread.join(timeout_s)
        if self._pending is not None:
            self._pending.abandon()


def _register(session: Session, model_uri: str) -> None:
    from train.model.registry import register_if_better

    config = session.config
    name = config["mlflow"]["registered_model_name"]
    if name:
        alias = config["mlflow"]["champion_alias"]
        version, moved = register_if_better(model_uri, session.run_id, name, alias,
                                            sanitize_key(config["sweep"]["objective"]), config["sweep"]["direction"])
        print(f"Registered {name} version {version}; {alias} {'moved to it' if moved else 'stays where it was'}")
