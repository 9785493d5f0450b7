"""A tracked training's life: open the run, record where it came from, train, finish the record, log the model.

Config in, run record out. Whatever fails once the run is open is recorded in it (run.active_run
decides the end state); the log and every output are uploaded on every path out of training.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import mlflow

from train import yolo
from train.console import ConsoleTee
from train.errors import RecordIncomplete
from train.hints import python_command
from train.interrupts import CheckpointSafeInterrupts
from train.model.weights import StartingWeights
from train.redact import redact, without_credentials
from train.tracking import attempts, lineage, resume
from train.tracking.checkpoints import STAGING, CheckpointUploader, Transport
from train.tracking.hooks import MlflowHooks, last_row_metrics
from train.tracking.names import sanitize_key
from train.tracking.record import RunRecord
from train.tracking.run import (active_run, all_params, check_artifacts_writable, end_status, one_line,
                                upload_outputs)
from train.tracking.spool import MetricSpool, PendingRecord


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
                    run_id) as run:
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
        else:
            _record_start(record, config, session)
        record.set_tags(attempts.tags(before, checkpoint is not None, checkpoint.epoch if checkpoint else None,
                                      os.environ))
        done = checkpoint is not None and checkpoint.finished
        spool = MetricSpool(session.tracking_uri, session.run_id)
        hooks = MlflowHooks(spool, session.save_dir)
        uploader = CheckpointUploader(Transport(record), session.save_dir, session.log_path, session.out_dir / STAGING,
                                      config["mlflow"]["checkpoint_every_epochs"],
                                      config["mlflow"]["checkpoint_every_minutes"], start_epoch,
                                      metrics_delivered=spool.delivered_through)
        outcome: Optional[BaseException] = None
        try:
            with ConsoleTee(session.log_path):
                print(f"MLflow run {session.run_id} in experiment {run.info.experiment_id} at "
                      f"{redact(session.tracking_uri)}")
                if config["mlflow"]["log_model"]:
                    from train.model.registry import check_serving_requirements_in_background

                    check_serving_requirements_in_background()
                try:
                    if done:
                        _finish_training(session.save_dir, checkpoint.epoch, opt.epochs)
                        hooks.last_metrics = last_row_metrics(session.save_dir / "results.csv")
                    else:
                        yolo.train(opt, interrupts, hooks, uploader)
                except BaseException as error:
                    traceback.print_exc()  # into train.log, which is uploaded below
                    outcome = error
                    raise
                finally:
                    interrupts.training_ended()
                    uploader.cancel()  # no more snapshots; the one in flight, if any, is waited for below
                    if uploader.enabled and not done:
                        print(uploader.summary())
        finally:
            _finish_record(spool, record, session, config["mlflow"]["delivery_timeout_s"], outcome, uploader)
        session.last_metrics = hooks.last_metrics
        if config["mlflow"]["log_model"]:
            _log_model(session)  # after _finish_record: the objective is on the server
    return session.last_metrics


def _record_start(record: RunRecord, config: Mapping[str, Any], session: Session) -> None:
    """The resolved config first (it proves the artifact store takes writes), then params and lineage."""
    check_artifacts_writable(record, config, config["mlflow"]["startup_timeout_s"])
    # `mlflow run` logs its -P parameters first, some under train_wrapper.py's flat names (epochs, imgsz, ...):
    # params are write-once, so those stay as given; the dotted keys hold the resolved values.
    logged = record.client.get_run(session.run_id).data.params
    record.log_params({k: v for k, v in all_params(config).items() if k not in logged})
    lineage.record(record, config, session.data_yaml)


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
                   outcome: Optional[BaseException], uploader: Optional[CheckpointUploader] = None) -> None:
    """Every metric delivered and every output uploaded, or RecordIncomplete with the rest kept locally.

    The checkpoint uploader is stopped first (within the same `timeout_s`), so no upload of its lands after these."""
    deadline = time.monotonic() + timeout_s
    if uploader is not None:
        uploader.cancel()  # drops what waits; the one in flight finishes its current request at most
    undelivered = spool.close(timeout_s)
    if uploader is not None and not uploader.join(deadline - time.monotonic()):
        print(f"The checkpoint upload in flight did not end within mlflow.delivery_timeout_s ({timeout_s:g} s): "
              f"abandoned ({uploader.last_error or 'still sending'})")
    pending = PendingRecord(tracking_uri=without_credentials(session.tracking_uri), run_id=session.run_id,
                            status=end_status(outcome), epochs=undelivered)
    if not undelivered:
        try:
            upload_outputs(record, session.out_dir, session.save_dir, session.log_path)
            return
        except Exception as error:  # noqa: BLE001 - the server went away between the metrics and the files
            reason = f"uploading the outputs failed: {one_line(error)}"
    else:
        reason = f"{len(undelivered)} epochs of metrics were not delivered ({spool.last_error})"
    path = pending.save(session.out_dir)
    raise RecordIncomplete(f"the tracking server did not take the whole record: {reason}; it is kept in {path}: "
                           f"deliver it with `{python_command(f'-m train.tracking.sync {session.out_dir}')}`") from outcome


def _log_model(session: Session) -> None:
    from train.model.registry import example_image, log_detector, register_if_better

    config = session.config
    model_uri = log_detector(session.save_dir / "weights" / "best.pt", config["train"]["imgsz"],
                             example_image(session.data_yaml), step=yolo.best_epoch(session.save_dir / "results.csv"))
    name = config["mlflow"]["registered_model_name"]
    if name:
        alias = config["mlflow"]["champion_alias"]
        version, moved = register_if_better(model_uri, session.run_id, name, alias,
                                            sanitize_key(config["sweep"]["objective"]), config["sweep"]["direction"])
        print(f"Registered {name} version {version}; {alias} {'moved to it' if moved else 'stays where it was'}")
