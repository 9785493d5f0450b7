"""The Hydra task: one config in, one MLflow run out.

Order matters: everything that can be refused (config, dataset) is refused before a run exists;
once the run is open, every outcome is recorded in it, with the log and whatever outputs exist.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, Mapping

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from train import offline
from train.cli import exit_bad_input
from train.config import CONF_DIR, ConfigError, register_schema, to_container, validate
from train.console import ConsoleTee
from train.data import DatasetError, prepare
from train.tracking.sweep import PARENT_RUN_ENV, TRIAL_ENV

EXIT_TRAINING_FAILED = 1
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


def _upload_outputs(save_dir: Path, log_path: Path, out_dir: Path) -> None:
    import mlflow

    if log_path.is_file():
        mlflow.log_artifact(str(log_path), "logs")
    if save_dir.is_dir():
        mlflow.log_artifacts(str(save_dir), "training-output")
    mlflow.log_artifacts(str(out_dir / ".hydra"), "config/hydra")


def _print_where_to_look(tracking_uri: str, status: str) -> None:
    import mlflow

    from train.tracking.run import run_url

    run = mlflow.last_active_run()
    if run is None:
        return
    print(f"MLflow run {run.info.run_id} ended {status}: {run_url(tracking_uri, run.info)}")
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


def _overrides() -> str:
    return " ".join(HydraConfig.get().overrides.task)


def _refuse(error: Exception, config: Mapping[str, Any]) -> float:
    """Bad input: one line, exit 2, no run. A sweep's trial is recorded as a FAILED child run that says why,
    so the sweep's record names it, and in a multirun the other trials go on."""
    sweep_tags = _sweep_tags()
    if sweep_tags:
        from train.tracking.run import record_refused_run, resolve_tracking_uri

        record_refused_run(resolve_tracking_uri(config["mlflow"]["tracking_uri"]), config["mlflow"]["experiment_name"],
                           config["mlflow"]["run_name"],
                           {**sweep_tags, "hydra_overrides": _overrides(), "error": str(error)})
    if not _in_sweep():
        exit_bad_input(error)  # type: ignore[arg-type]
    print(f"error: {error}", file=sys.stderr)
    return math.nan


def _train_in_run(config: Mapping[str, Any], data_yaml: Path, out_dir: Path, tracking_uri: str) -> Dict[str, float]:
    import mlflow
    import torch

    from train import yolo
    from train.tracking.hooks import MlflowHooks
    from train.tracking.run import active_run, all_params

    device = yolo.resolve_device(config["train"]["device"])
    tags = {**_run_tags(config, device, torch.cuda.is_available(), _overrides()), **_sweep_tags()}
    log_path = out_dir / "train.log"
    with active_run(tracking_uri, config["mlflow"]["experiment_name"], config["mlflow"]["run_name"], tags) as run:
        opt = yolo.build_opt(config, data_yaml, out_dir)  # inside the run: whatever fails from here is recorded
        # `mlflow run` logs its -P parameters first, some under train_wrapper.py's flat names (epochs, imgsz,
        # ...): params are write-once, so those stay as given; the dotted keys hold the resolved values.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({k: v for k, v in all_params(config).items() if k not in logged})
        mlflow.log_dict(config, "config/config.yaml")
        hooks = MlflowHooks(run.info.run_id, yolo.save_dir(out_dir))
        try:
            with ConsoleTee(log_path):
                print(f"MLflow run {run.info.run_id} in experiment {run.info.experiment_id} at {tracking_uri}")
                try:
                    yolo.train(opt, hooks)
                except BaseException:
                    traceback.print_exc()  # into train.log, which is uploaded below
                    raise
        finally:
            hooks.flush()
            _upload_outputs(yolo.save_dir(out_dir), log_path, out_dir)
    return hooks.last_metrics


def train_and_track(cfg: DictConfig) -> float:
    """The objective (config sweep.objective, last epoch) for sweepers; NaN when the trial failed."""
    config = to_container(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    cache_dir = Path(config["paths"]["cache_dir"])
    try:
        validate(cfg)  # again: a sweep's trials never went through the command-line check
        data_yaml = prepare(cfg.data, cache_dir, out_dir)
    except (ConfigError, DatasetError) as error:
        return _refuse(error, config)
    offline.apply(cache_dir)  # before anything below imports yolov5

    from train.tracking.names import sanitize_key
    from train.tracking.run import resolve_tracking_uri

    if _in_sweep() and not config["train"]["device"]:
        import torch

        from train.yolo import device_for_trial

        config["train"]["device"] = device_for_trial(HydraConfig.get().job.num, torch.cuda.device_count())

    tracking_uri = resolve_tracking_uri(config["mlflow"]["tracking_uri"])
    # SIGTERM (a Kubernetes eviction, a `kill`) ends the run like Ctrl-C: KILLED, with its log and outputs uploaded
    # within the pod's grace period, instead of a process gone and a run left RUNNING.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        metrics = _train_in_run(config, data_yaml, out_dir, tracking_uri)
    except KeyboardInterrupt:
        _print_where_to_look(tracking_uri, "KILLED")
        print("error: training interrupted; the run is recorded as KILLED", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        _print_where_to_look(tracking_uri, "FAILED")
        print(f"error: training failed: {type(exc).__name__}: {exc} (traceback in {out_dir / 'train.log'})",
              file=sys.stderr)
        if _in_sweep():
            return math.nan  # the sweep goes on; its parent run ends FAILED, naming this trial
        sys.exit(EXIT_TRAINING_FAILED)
    _print_where_to_look(tracking_uri, "FINISHED")
    return metrics.get(sanitize_key(config["sweep"]["objective"]), math.nan)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    return train_and_track(cfg)
