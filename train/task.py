"""The Hydra task: one composed config in, one outcome out; never exits the process (train.cli does).

Order matters: everything that can be refused (config, devices, dataset, the tracking server) is
refused before a run exists; once the run is open, every outcome is recorded in it, with the log and
whatever outputs exist (train.tracking.session).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from train import offline
from train.checks import validate
from train.config import to_container
from train.console import ConsoleTee, strip_ansi
from train.data import prepare
from train.hints import python_command
from train.fetch import FetchSettings
from train.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TRAINING_FAILED, BadInput, Outcome, RecipeError
from train.interrupts import CheckpointSafeInterrupts
from train.model.weights import StartingWeights
from train.redact import redact
from train.tracking.names import sanitize_key
from train.tracking.sweep import PARENT_RUN_ENV, TRIAL_ENV


def _in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> List[str]:
    return list(HydraConfig.get().overrides.task)


def _sweep_tags() -> Dict[str, str]:
    """In a sweep: the parent run (set by train.tracking.sweep) and this trial's number."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return {}
    trial = os.environ.get(TRIAL_ENV) or str(HydraConfig.get().job.num)  # job.num exists in a multirun only
    return {"mlflow.parentRunId": parent, "sweep_trial": trial}


def _run_name(config: Mapping[str, Any], sweep_tags: Mapping[str, str]) -> str:
    name = config["mlflow"]["run_name"]
    return f"{name}-trial{sweep_tags['sweep_trial']}" if sweep_tags else name


def _run_tags(config: Mapping[str, Any], device: str, gpu_available: bool,
              weights: Optional[StartingWeights]) -> Dict[str, str]:
    return {
        **(weights.tags() if weights else {}),
        **config["mlflow"]["tags"],
        "dataset": config["data"]["name"],
        "weights": config["model"]["weights"] or "none (trained from scratch)",
        "device": device,
        "gpu_available": str(gpu_available).lower(),
        "hydra_overrides": " ".join(_overrides()),
    }


def _failure_hint(error: BaseException) -> str:
    text = str(error).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return " (out of memory: lower train.batch or train.imgsz)"
    if "could not create a primitive" in text:  # oneDNN, when the memory for a CPU kernel cannot be had
        return " (likely out of memory: lower train.batch or train.imgsz)"
    return ""


def _say(line: str) -> None:
    # Plain text, as in train.log: YOLOv5 colours parts of its exception messages.
    print(f"error: {redact(strip_ansi(line))}", file=sys.stderr)


def _refuse(error: RecipeError, config: Mapping[str, Any]) -> Outcome:
    """Refused before a run exists: one line, no run. A sweep's trial is recorded as a FAILED child run that
    says why, so the sweep's record names it; the other trials go on."""
    sweep_tags = _sweep_tags()
    if sweep_tags and isinstance(error, BadInput):
        from train.tracking.run import record_refused_run, resolve_tracking_uri

        record_refused_run(resolve_tracking_uri(config["mlflow"]["tracking_uri"]), config["mlflow"]["experiment_name"],
                           _run_name(config, sweep_tags),
                           {**sweep_tags, "hydra_overrides": " ".join(_overrides()), "error": str(error)})
    elif isinstance(error, BadInput) and os.environ.get("MLFLOW_RUN_ID"):
        from train.tracking.run import record_refusal, resolve_tracking_uri

        # `mlflow run` made the run before this process started (a Kubernetes Job's pod): it says why it failed.
        record_refusal(resolve_tracking_uri(config["mlflow"]["tracking_uri"]), os.environ["MLFLOW_RUN_ID"],
                       str(error))
    _say(str(error))
    return Outcome(error.exit_code)


@dataclass
class _Prepared:
    """What a start without refusal found: the config to train (a resumption's or reproduction's), its data
    yaml, the tracking URI, the run to continue if any, and the new run's name."""

    config: Dict[str, Any]
    data_yaml: Path
    tracking_uri: str
    resume_run_id: Optional[str]
    run_name: str
    weights: Optional[StartingWeights]  # None: from scratch, or a resumption (its checkpoint has the weights)


def _sources(config: Mapping[str, Any], tracking_uri: str) -> FetchSettings:
    def server() -> str:  # runs:/ and models:/ need it even when this run is not tracked
        from train.tracking.run import resolve_tracking_uri

        return tracking_uri or resolve_tracking_uri(config["mlflow"]["tracking_uri"])

    f = config["fetch"]
    return FetchSettings(Path(config["paths"]["cache_dir"]), f["timeout_s"], f["max_concurrency"], server)


def _starting_weights(config: Mapping[str, Any], sources: FetchSettings, data_yaml: Path) -> StartingWeights:
    import yaml

    from train.model import weights as starting
    from train.yolo import model_yaml

    found = starting.locate(config["model"]["weights"], sources, config["fetch"]["release_url"])
    nc = 1 if config["train"]["single_cls"] else len(yaml.safe_load(data_yaml.read_text())["names"])
    for note in starting.check(found, model_yaml(config["model"]["cfg"]), nc):
        print(f"note: {note}")
    return found


def _prepare(cfg: DictConfig, config: Dict[str, Any], out_dir: Path) -> _Prepared:
    """Every check that can refuse, in order; raises a RecipeError."""
    validate(cfg)  # again: a sweep's trials never went through the command-line check
    tracking_uri, resumption, reproduction = "", None, None
    if config["mlflow"]["enabled"]:
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
        validate(OmegaConf.create(config))
    sources = _sources(config, tracking_uri)
    data_yaml = prepare(OmegaConf.create(config["data"]), sources, out_dir)
    weights = _starting_weights(config, sources, data_yaml) if config["model"]["weights"] and not resumption else None
    run_name = _run_name(config, _sweep_tags())
    if reproduction:
        from train.tracking import reproduce

        reproduce.check_data(reproduction, data_yaml)
        reproduce.check_weights(reproduction, weights)
        run_name = reproduction.run_name
    return _Prepared(config, data_yaml, tracking_uri, resumption.run_id if resumption else None, run_name, weights)


def train_and_track(cfg: DictConfig) -> Outcome:
    config = to_container(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    interrupts = CheckpointSafeInterrupts()
    # From here SIGTERM (a Kubernetes eviction, a `kill`) ends the run like Ctrl-C: KILLED, with its log,
    # outputs and last checkpoint uploaded within the pod's grace period, instead of a run left RUNNING.
    interrupts.install()
    offline.apply(Path(config["paths"]["cache_dir"]))  # before anything below imports yolov5
    try:
        prepared = _prepare(cfg, config, out_dir)
    except RecipeError as error:
        return _refuse(error, config)
    config = prepared.config
    if _in_sweep() and not config["train"]["device"]:
        import torch

        from train.yolo import device_for_trial

        config["train"]["device"] = device_for_trial(HydraConfig.get().job.num, torch.cuda.device_count())
    if not config["mlflow"]["enabled"]:
        return _train_untracked(config, prepared, out_dir, interrupts)
    return _train_tracked(prepared, out_dir, interrupts)


def _train_untracked(config: Mapping[str, Any], prepared: _Prepared, out_dir: Path,
                     interrupts: CheckpointSafeInterrupts) -> Outcome:
    """mlflow.enabled=false: the same training and console log, no MLflow at all (a baseline for bench/)."""
    from train import yolo

    try:
        with ConsoleTee(out_dir / "train.log"):
            try:
                yolo.train(yolo.build_opt(config, prepared.data_yaml, out_dir, _weights_path(prepared)), interrupts)
            finally:
                interrupts.training_ended()
    except KeyboardInterrupt:
        _say("training interrupted")
        return _interrupted()
    except Exception as error:  # noqa: BLE001 - any failure of training is reported the same way
        _say(f"training failed: {type(error).__name__}: {error}{_failure_hint(error)}")
        return Outcome(EXIT_TRAINING_FAILED)
    return Outcome(EXIT_OK)


def _weights_path(prepared: _Prepared) -> str:
    return str(prepared.weights.path) if prepared.weights else ""


def _interrupted() -> Outcome:
    if _in_sweep():
        raise KeyboardInterrupt  # Ctrl-C stops the whole sweep, not one trial
    return Outcome(EXIT_INTERRUPTED)


def _train_tracked(prepared: _Prepared, out_dir: Path, interrupts: CheckpointSafeInterrupts) -> Outcome:
    import torch

    from train import yolo
    from train.tracking.session import Session, train_tracked
    from train.tracking.run import print_where_to_look

    config = prepared.config
    sweep_tags = _sweep_tags()
    tags = {**_run_tags(config, yolo.resolve_device(config["train"]["device"]), torch.cuda.is_available(),
                        prepared.weights), **sweep_tags}
    if prepared.resume_run_id:
        tags["resume_overrides"] = tags.pop("hydra_overrides")  # the run's own overrides stay as first recorded
    if config["reproduce"]["run_id"]:
        tags["reproduces"] = config["reproduce"]["run_id"]
    session = Session(config, prepared.data_yaml, out_dir, prepared.tracking_uri, tags, prepared.run_name,
                      prepared.resume_run_id, prepared.weights)
    try:
        metrics = train_tracked(session, interrupts)
    except RecipeError as error:  # the tracking server gone, or the record incomplete
        _say(str(error))
        return Outcome(error.exit_code, run_id=session.run_id)
    except KeyboardInterrupt:
        print_where_to_look(session.tracking_uri, session.run_id, "KILLED")
        if session.has_checkpoint():
            resume = python_command(f"-m train train.resume={session.run_id}")
            _say(f"training interrupted; the run is recorded as KILLED, with its last checkpoint: continue it "
                 f"with `{resume}`")
        else:
            _say("training interrupted before its first checkpoint; the run is recorded as KILLED, with its log "
                 "(nothing to resume: start it again)")
        return _interrupted()
    except Exception as error:  # noqa: BLE001 - recorded in the run as FAILED; here it becomes one line
        print_where_to_look(session.tracking_uri, session.run_id, "FAILED")
        _say(f"training failed: {type(error).__name__}: {error}{_failure_hint(error)} "
             f"(traceback in {out_dir / 'train.log'})")
        return Outcome(EXIT_TRAINING_FAILED, run_id=session.run_id)
    print_where_to_look(session.tracking_uri, session.run_id, "FINISHED")
    objective = metrics.get(sanitize_key(config["sweep"]["objective"]), math.nan)
    return Outcome(EXIT_OK, objective=objective, run_id=session.run_id)
