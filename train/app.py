"""The Hydra task: one config in, one MLflow run out.

Order matters: everything that can be refused (config, dataset) is refused before a run exists;
once the run is open, every outcome is recorded in it, with the log and whatever outputs exist.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from train import offline
from train.cli import EXIT_BAD_INPUT
from train.config import CONF_DIR, register_schema, to_container, validate
from train.errors import ConfigError
from train.console import ConsoleTee
from train.data import DatasetError, prepare
from train.interrupts import CheckpointSafeInterrupts
from train.tracking.sweep import PARENT_RUN_ENV, TRIAL_ENV

EXIT_TRAINING_FAILED = 1
# The tracking server or artifact store could not be reached at start, or did not take the whole record.
EXIT_TRACKING_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

register_schema()


def _run_tags(config: Mapping[str, Any], device: str, gpu_available: bool, overrides: str) -> Dict[str, str]:
    return {
        **config["mlflow"]["tags"],
        "dataset": config["data"]["name"],
        "weights": config["model"]["weights"] or "none (trained from scratch)",
        "device": device,
        "gpu_available": str(gpu_available).lower(),
        "hydra_overrides": overrides,
    }


def _print_where_to_look(tracking_uri: str, run_id: str, status: str) -> None:
    import mlflow

    from train.tracking.run import run_url

    if not run_id:
        return

    info = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info
    print(f"MLflow run {run_id} ended {status}: {run_url(tracking_uri, info)}")
    if tracking_uri.startswith("sqlite:"):
        print(f"Open it with: mlflow ui --backend-store-uri {tracking_uri}")


def _in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_tags() -> Dict[str, str]:
    """In a sweep: the parent run (set by train.tracking.sweep) and this trial's number."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return {}
    trial = os.environ.get(TRIAL_ENV) or str(HydraConfig.get().job.num)  # job.num exists in a multirun only
    return {"mlflow.parentRunId": parent, "sweep_trial": trial}


def _overrides() -> List[str]:
    return list(HydraConfig.get().overrides.task)


def _refuse(error: Exception, config: Mapping[str, Any], exit_code: int = EXIT_BAD_INPUT) -> float:
    """Refused before a run exists: one line, a non-zero exit, no run. A sweep's trial is recorded as a FAILED
    child run that says why, so the sweep's record names it, and in a multirun the other trials go on."""
    from train.redact import redact

    sweep_tags = _sweep_tags()
    if sweep_tags and exit_code == EXIT_BAD_INPUT:
        from train.tracking.run import record_refused_run, resolve_tracking_uri

        record_refused_run(resolve_tracking_uri(config["mlflow"]["tracking_uri"]), config["mlflow"]["experiment_name"],
                           config["mlflow"]["run_name"],
                           {**sweep_tags, "hydra_overrides": redact(" ".join(_overrides())), "error": str(error)})
    print(f"error: {error}", file=sys.stderr)
    if not _in_sweep():
        sys.exit(exit_code)
    return math.nan


def _finish_record(spool, run_id: str, out_dir: Path, log_path: Path, tracking_uri: str, timeout_s: float,
                   outcome: BaseException | None) -> None:
    """Every metric delivered and every output uploaded, or RecordIncomplete with the rest kept locally."""
    import mlflow

    from train import yolo
    from train.errors import RecordIncomplete
    from train.tracking.run import end_status, one_line, upload_outputs
    from train.tracking.spool import PendingRecord

    undelivered = spool.close(timeout_s)
    pending = PendingRecord(tracking_uri=tracking_uri, run_id=run_id, status=end_status(outcome), epochs=undelivered)
    if not undelivered:
        try:
            upload_outputs(mlflow.MlflowClient(), run_id, out_dir, yolo.save_dir(out_dir), log_path)
            return
        except Exception as error:  # noqa: BLE001 - the server went away between the metrics and the files
            reason = f"uploading the outputs failed: {one_line(error)}"
    else:
        reason = f"{len(undelivered)} epochs of metrics were not delivered ({spool.last_error})"
    path = pending.save(out_dir)
    raise RecordIncomplete(f"the tracking server did not take the whole record: {reason}; it is kept in {path}: "
                           f"deliver it with `python -m train.tracking.sync {out_dir}`") from outcome


def _train_in_run(config: Mapping[str, Any], data_yaml: Path, out_dir: Path, tracking_uri: str,
                  resume_run_id: str | None, interrupts: CheckpointSafeInterrupts) -> Dict[str, float]:
    import mlflow
    import torch

    from train import yolo
    from train.tracking import lineage, resume
    from train.tracking.hooks import MlflowHooks
    from train.redact import redact
    from train.tracking.run import active_run, all_params, check_artifacts_writable
    from train.tracking.spool import MetricSpool

    device = yolo.resolve_device(config["train"]["device"])
    tags = {**_run_tags(config, device, torch.cuda.is_available(), redact(" ".join(_overrides()))), **_sweep_tags()}
    if resume_run_id:
        tags["resume_overrides"] = tags.pop("hydra_overrides")  # the run's own overrides stay as first recorded
    if config["reproduce"]["run_id"]:
        tags["reproduces"] = config["reproduce"]["run_id"]
    log_path = out_dir / "train.log"
    run_id = resume_run_id or os.environ.get("MLFLOW_RUN_ID") or None
    startup_timeout_s = config["mlflow"]["startup_timeout_s"]
    with active_run(tracking_uri, config["mlflow"]["experiment_name"], config["mlflow"]["run_name"], tags,
                    run_id) as run:
        run_id = run.info.run_id
        opt = yolo.build_opt(config, data_yaml, out_dir)  # inside the run: whatever fails from here is recorded
        if resume_run_id:
            checkpoint = resume.fetch(tracking_uri, run_id, yolo.save_dir(out_dir), log_path)
            mlflow.set_tag("resumed_at_epoch", str(yolo.continue_from(opt, checkpoint)))
        else:
            check_artifacts_writable(run_id, {**config, "mlflow": {**config["mlflow"],
                                                                     "tracking_uri": redact(tracking_uri)}},
                                     startup_timeout_s)
            # `mlflow run` logs its -P parameters first, some under train_wrapper.py's flat names (epochs,
            # imgsz, ...): params are write-once, so those stay as given; the dotted keys hold the resolved values.
            logged = mlflow.get_run(run_id).data.params
            mlflow.log_params({k: v for k, v in all_params(config).items() if k not in logged})
            lineage.record(config, data_yaml)
        spool = MetricSpool(tracking_uri, run_id)
        outcome: BaseException | None = None
        hooks = MlflowHooks(spool, yolo.save_dir(out_dir))
        try:
            with ConsoleTee(log_path):
                print(f"MLflow run {run_id} in experiment {run.info.experiment_id} at {redact(tracking_uri)}")
                if config["mlflow"]["log_model"]:
                    from train.model.registry import check_serving_requirements_in_background

                    check_serving_requirements_in_background()
                try:
                    yolo.train(opt, interrupts, hooks)
                except BaseException as error:
                    traceback.print_exc()  # into train.log, which is uploaded below
                    outcome = error
                    raise
                finally:
                    interrupts.training_ended()
        finally:
            _finish_record(spool, run_id, out_dir, log_path, tracking_uri, config["mlflow"]["delivery_timeout_s"],
                           outcome)
        if config["mlflow"]["log_model"]:
            _log_model(config, data_yaml, out_dir, run_id)  # after _finish_record: the objective is on the server
    return hooks.last_metrics


def _log_model(config: Mapping[str, Any], data_yaml: Path, out_dir: Path, run_id: str) -> None:
    from train import yolo
    from train.model.registry import example_image, log_detector, register_if_better
    from train.tracking.names import sanitize_key

    save_dir = yolo.save_dir(out_dir)
    model_uri = log_detector(save_dir / "weights" / "best.pt", config["train"]["imgsz"], example_image(data_yaml),
                             step=yolo.best_epoch(save_dir / "results.csv"))
    name = config["mlflow"]["registered_model_name"]
    if name:
        alias = config["mlflow"]["champion_alias"]
        version, moved = register_if_better(model_uri, run_id, name, alias,
                                            sanitize_key(config["sweep"]["objective"]), config["sweep"]["direction"])
        print(f"Registered {name} version {version}; {alias} {'moved to it' if moved else 'stays where it was'}")


def _train_untracked(config: Mapping[str, Any], data_yaml: Path, out_dir: Path,
                     interrupts: CheckpointSafeInterrupts) -> float:
    """mlflow.enabled=false: the same training and console log, no MLflow at all (a baseline for bench/)."""
    from train import yolo

    try:
        with ConsoleTee(out_dir / "train.log"):
            try:
                yolo.train(yolo.build_opt(config, data_yaml, out_dir), interrupts)
            finally:
                interrupts.training_ended()
    except KeyboardInterrupt:
        print("error: training interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        print(f"error: training failed: {type(error).__name__}: {error}{_failure_hint(error)}", file=sys.stderr)
        sys.exit(EXIT_TRAINING_FAILED)
    return math.nan


def _failure_hint(error: Exception) -> str:
    text = str(error).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return " (out of memory: lower train.batch or train.imgsz)"
    if "could not create a primitive" in text:  # oneDNN, when the memory for a CPU kernel cannot be had
        return " (likely out of memory: lower train.batch or train.imgsz)"
    return ""


def train_and_track(cfg: DictConfig) -> float:
    """The objective (config sweep.objective, last epoch) for sweepers; NaN when the trial failed."""
    config = to_container(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    cache_dir = Path(config["paths"]["cache_dir"])
    interrupts = CheckpointSafeInterrupts()
    # From here SIGTERM (a Kubernetes eviction, a `kill`) ends the run like Ctrl-C: KILLED, with its log,
    # outputs and last checkpoint uploaded within the pod's grace period, instead of a run left RUNNING.
    interrupts.install()
    offline.apply(cache_dir)  # before anything below imports yolov5

    from train.errors import RecordIncomplete, TrackingUnavailable
    from train.tracking.names import sanitize_key

    tracked = config["mlflow"]["enabled"]
    tracking_uri = ""
    try:
        validate(cfg)  # again: a sweep's trials never went through the command-line check
        resumption = reproduction = None
        if tracked:
            # MLflow is imported for tracked runs only (0.9 s): without tracking, the process is YOLOv5 and ours.
            from train.tracking import reproduce, resume
            from train.tracking.run import check_reachable, resolve_tracking_uri

            tracking_uri = resolve_tracking_uri(config["mlflow"]["tracking_uri"])
            check_reachable(tracking_uri, config["mlflow"]["startup_timeout_s"])
            resumption = resume.plan(tracking_uri, config, _overrides())
            if config["reproduce"]["run_id"]:
                reproduction = reproduce.plan(tracking_uri, config, _overrides())
        if resumption or reproduction:
            config = (resumption or reproduction).config  # type: ignore[union-attr]
            cfg = OmegaConf.create(config)
            validate(cfg)
        data_yaml = prepare(cfg.data, Path(config["paths"]["cache_dir"]), out_dir)
        if reproduction:
            reproduce.check_data(reproduction, data_yaml)
    except TrackingUnavailable as error:
        return _refuse(error, config, EXIT_TRACKING_UNAVAILABLE)
    except (ConfigError, DatasetError) as error:
        return _refuse(error, config)

    if _in_sweep() and not config["train"]["device"]:
        import torch

        from train.yolo import device_for_trial

        config["train"]["device"] = device_for_trial(HydraConfig.get().job.num, torch.cuda.device_count())

    if not tracked:
        return _train_untracked(config, data_yaml, out_dir, interrupts)
    run_id = resumption.run_id if resumption else None
    try:
        metrics = _train_in_run(config, data_yaml, out_dir, tracking_uri, run_id, interrupts)
    except TrackingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        if _in_sweep():
            return math.nan
        sys.exit(EXIT_TRACKING_UNAVAILABLE)
    except RecordIncomplete as error:
        print(f"error: {error}", file=sys.stderr)
        if _in_sweep():
            return math.nan
        sys.exit(EXIT_TRACKING_UNAVAILABLE)
    except KeyboardInterrupt:
        _print_where_to_look(tracking_uri, _last_run_id(), "KILLED")
        print("error: training interrupted; the run is recorded as KILLED, with its last checkpoint: continue it "
              f"with `python -m train train.resume={_last_run_id()}`", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        _print_where_to_look(tracking_uri, _last_run_id(), "FAILED")
        print(f"error: training failed: {type(error).__name__}: {error}{_failure_hint(error)} "
              f"(traceback in {out_dir / 'train.log'})", file=sys.stderr)
        if _in_sweep():
            return math.nan  # the sweep goes on; its parent run ends FAILED, naming this trial
        sys.exit(EXIT_TRAINING_FAILED)
    _print_where_to_look(tracking_uri, _last_run_id(), "FINISHED")
    return metrics.get(sanitize_key(config["sweep"]["objective"]), math.nan)


def _last_run_id() -> str:
    import mlflow

    run = mlflow.last_active_run()
    return run.info.run_id if run else ""


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    return train_and_track(cfg)
