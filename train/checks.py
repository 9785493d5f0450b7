"""The rules on a composed config that types alone cannot express: ranges, files, consistency, devices.

Each failed rule raises ConfigError with one line naming the key, before any run exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

from omegaconf import DictConfig

from train.errors import ConfigError
from train.redact import redact

DATASET_NAMES = ("synthetic", "coco128", "yolo")
DATA_SCHEMES = ("s3", "http", "https", "runs", "mlflow-artifacts", "file")
WEIGHTS_SCHEMES = (*DATA_SCHEMES, "models")
_DEVICE = re.compile(r"^(|cpu|mps|\d+(,\d+)*|cuda:\d+)$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# The stores MLflow can track to ('' = a local path); a typo would otherwise surface as a stack trace mid-start.
_TRACKING_SCHEMES = ("", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: DictConfig) -> None:
    """Range and consistency rules on a composed (already type-checked) config."""
    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.batch >= 1, "train.batch", f"must be >= 1, got {t.batch}")
    _check(t.imgsz >= 32 and t.imgsz % 32 == 0, "train.imgsz",
           f"must be a positive multiple of 32 (the model's largest stride), got {t.imgsz}")
    _check(t.workers >= 0, "train.workers", f"must be >= 0, got {t.workers}")
    _check(t.patience >= 0, "train.patience", f"must be >= 0, got {t.patience}")
    _check(bool(_DEVICE.match(t.device)), "train.device",
           f"must be '', 'cpu', 'mps' or CUDA indices like '0' or '0,1', got {t.device!r}")
    _check(t.optimizer in ("SGD", "Adam", "AdamW"), "train.optimizer",
           f"must be SGD, Adam or AdamW, got {t.optimizer!r}")
    check_devices(t.device)
    _check(t.cache in (None, "ram", "disk"), "train.cache", f"must be null, ram or disk, got {t.cache!r}")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")

    _check(cfg.hyp.lr0 > 0, "hyp.lr0", f"must be > 0, got {cfg.hyp.lr0}")
    for key in ("fliplr", "flipud", "mosaic", "mixup", "copy_paste"):
        value = cfg.hyp[key]
        _check(0.0 <= value <= 1.0, f"hyp.{key}", f"is a probability, must be in [0, 1], got {value}")

    from train.yolo import model_yaml

    _check(model_yaml(cfg.model.cfg).is_file(), "model.cfg",
           f"no such model yaml: {cfg.model.cfg} (a name from yolov5/models/ or an absolute path)")
    _check_weights(cfg.model.weights)

    d = cfg.data
    _check(d.name in DATASET_NAMES, "data.name", f"must be one of {', '.join(DATASET_NAMES)}, got {d.name!r}")
    if d.root is not None:
        _check(Path(d.root).is_dir(), "data.root", f"no such folder: {d.root}")
    _check(d.name != "yolo" or bool(d.source), "data.source",
           "data=yolo needs it: a dataset yaml, a folder holding one, or a zip of one (a local path, s3://, "
           "http(s)://, runs:/ or mlflow-artifacts:)")
    _check(d.name == "yolo" or d.source is None, "data.source", f"is for data=yolo, not data={d.name}")
    if d.source:
        _check_source(d.source, "data.source", DATA_SCHEMES)
    if d.synthetic is not None:
        s = d.synthetic
        _check(s.train_images >= 1, "data.synthetic.train_images", f"must be >= 1, got {s.train_images}")
        _check(s.val_images >= 1, "data.synthetic.val_images", f"must be >= 1, got {s.val_images}")
        _check(s.image_size >= 32, "data.synthetic.image_size", f"must be >= 32, got {s.image_size}")

    _check(t.resume is None or bool(_RUN_ID.match(t.resume)), "train.resume",
           f"must be an MLflow run id (32 hexadecimal characters), got {t.resume!r}")
    _check(cfg.reproduce.run_id is None or bool(_RUN_ID.match(cfg.reproduce.run_id)), "reproduce.run_id",
           f"must be an MLflow run id (32 hexadecimal characters), got {cfg.reproduce.run_id!r}")
    _check(not (t.resume and cfg.reproduce.run_id), "train.resume",
           "continues a run, reproduce.run_id trains a new one: give one of them")
    m = cfg.mlflow
    _check(not m.registered_model_name or m.log_model, "mlflow.registered_model_name",
           "needs mlflow.log_model=true (only a logged model can be registered)")
    _check(m.startup_timeout_s > 0, "mlflow.startup_timeout_s", f"must be > 0, got {m.startup_timeout_s}")
    _check(m.delivery_timeout_s >= 0, "mlflow.delivery_timeout_s", f"must be >= 0, got {m.delivery_timeout_s}")
    _check(m.checkpoint_every_epochs >= 0, "mlflow.checkpoint_every_epochs",
           f"must be >= 0 (0: off), got {m.checkpoint_every_epochs}")
    _check(m.checkpoint_every_minutes >= 0, "mlflow.checkpoint_every_minutes",
           f"must be >= 0 (0: off), got {m.checkpoint_every_minutes}")
    # MLflow reads an interval of 0 as its default (10 s) and a negative one as no wait at all.
    _check(m.system_metrics.sampling_interval_s > 0, "mlflow.system_metrics.sampling_interval_s",
           f"must be > 0, got {m.system_metrics.sampling_interval_s}")
    _check(m.system_metrics.samples_before_logging >= 1, "mlflow.system_metrics.samples_before_logging",
           f"must be >= 1, got {m.system_metrics.samples_before_logging}")
    if m.tracking_uri:
        scheme = m.tracking_uri.split(":", 1)[0].split("+", 1)[0] if ":" in m.tracking_uri else ""
        _check(scheme in _TRACKING_SCHEMES, "mlflow.tracking_uri",
               f"unsupported scheme {scheme!r} in {redact(m.tracking_uri)!r} (use one of: "
               f"{', '.join(s for s in _TRACKING_SCHEMES if s)}, or a local path)")

    _check(cfg.fetch.timeout_s > 0, "fetch.timeout_s", f"must be > 0, got {cfg.fetch.timeout_s}")
    _check(cfg.fetch.max_concurrency >= 1, "fetch.max_concurrency", f"must be >= 1, got {cfg.fetch.max_concurrency}")
    _check(cfg.sweep.direction in ("maximize", "minimize"), "sweep.direction",
           f"must be maximize or minimize, got {cfg.sweep.direction!r}")
    _check(cfg.sweep.n_jobs >= 1, "sweep.n_jobs", f"must be >= 1, got {cfg.sweep.n_jobs}")
    _check(bool(cfg.mlflow.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")
    _check(bool(cfg.mlflow.run_name.strip()), "mlflow.run_name", "must not be empty")


def _check_source(uri: str, key: str, schemes: tuple) -> None:
    """A URI of a scheme train.fetch reads, or a local path that exists (fetching checks the rest)."""
    from train.fetch import scheme

    kind = scheme(uri)
    if kind:
        _check(kind in schemes, key, f"unsupported scheme {kind!r} in {redact(uri)!r} (a local path, or one of: "
                                     f"{', '.join(s + ':' for s in schemes if s != 'file')})")
    else:
        try:
            exists = Path(uri).expanduser().exists()
        except OSError as error:  # a folder on the way this user may not enter
            raise ConfigError(f"{key}: cannot look at {uri}: {error.strerror}") from None
        _check(exists, key, f"no such file or folder: {uri}")


def _check_weights(weights: str) -> None:
    from train.model.weights import is_release_download

    if weights and not is_release_download(weights):
        _check_source(weights, "model.weights", WEIGHTS_SCHEMES)


def cuda_indices(device: str) -> List[int]:
    """The CUDA device indices a YOLOv5 device string names ('0,1' -> [0, 1]; 'cuda:1' -> [1]; 'cpu' -> [])."""
    if device.startswith("cuda:"):
        return [int(device.split(":", 1)[1])]
    return [int(i) for i in device.split(",")] if device and device[0].isdigit() else []


def check_devices(device: str) -> None:
    """Every CUDA device asked for exists here: otherwise YOLOv5 would fail only after a run was created."""
    wanted = cuda_indices(device)
    if not wanted:
        return
    import torch  # only when a GPU is named: a CPU run's check stays free of torch's import

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in wanted if i >= count]
    if not missing:
        return
    present = "no CUDA GPU" if count == 0 else f"{count} CUDA GPU{'s' if count > 1 else ''} (0-{count - 1})"
    raise ConfigError(f"train.device: {device!r} asks for CUDA device {missing[0]}, but this machine has {present} "
                      f"(train.device=cpu, or '' for cuda:0 when there is one)")
