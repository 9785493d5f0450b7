"""The typed shape of the Hydra config (conf/), and the checks types alone cannot express.

The dataclasses are registered as Hydra schemas, so a value of the wrong type or an unknown key
fails while the config is composed; `validate` adds the range rules. Both raise `ConfigError`,
whose text is the one line the user sees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from train.errors import ConfigError
from train.redact import redact

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_NAMES = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")
DATASET_NAMES = ("synthetic", "coco128")


@dataclass
class SyntheticDataConfig:
    train_images: int = 256
    val_images: int = 64
    image_size: int = 128
    seed: int = 0


@dataclass
class DataConfig:
    name: str = MISSING
    # The image size this dataset is meant for; train.imgsz follows it unless overridden.
    imgsz: int = 640
    # An existing dataset folder in coco128 layout; null: prepare one under paths.cache_dir.
    root: Optional[str] = None
    # Where coco128 is downloaded from when `root` is null and the cache holds no copy.
    download_url: Optional[str] = None
    download_timeout_s: float = 30.0
    synthetic: Optional[SyntheticDataConfig] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    # A model yaml shipped in yolov5/models/, or an absolute path to one of your own.
    cfg: str = MISSING
    # Pretrained weights: '' trains from scratch; otherwise an absolute path to a local .pt file.
    weights: str = ""


@dataclass
class TrainConfig:
    epochs: int = 3
    batch: int = 16
    imgsz: int = 640
    # YOLOv5 device string: '' picks cuda:0 when available, else cpu; or 'cpu', '0', '0,1'.
    device: str = ""
    workers: int = 2
    seed: int = 0
    optimizer: str = "SGD"
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    # Cache decoded images: null (off), 'ram' or 'disk'.
    cache: Optional[str] = None
    rect: bool = False
    single_cls: bool = False
    noval: bool = False
    noplots: bool = False
    # An MLflow run id: continue that run from the last checkpoint in its artifacts (train/tracking/resume.py).
    resume: Optional[str] = None


@dataclass
class HypConfig:
    lr0: float = MISSING
    lrf: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    warmup_epochs: float = MISSING
    warmup_momentum: float = MISSING
    warmup_bias_lr: float = MISSING
    box: float = MISSING
    cls: float = MISSING
    cls_pw: float = MISSING
    obj: float = MISSING
    obj_pw: float = MISSING
    iou_t: float = MISSING
    anchor_t: float = MISSING
    fl_gamma: float = MISSING
    hsv_h: float = MISSING
    hsv_s: float = MISSING
    hsv_v: float = MISSING
    degrees: float = MISSING
    translate: float = MISSING
    scale: float = MISSING
    shear: float = MISSING
    perspective: float = MISSING
    flipud: float = MISSING
    fliplr: float = MISSING
    mosaic: float = MISSING
    mixup: float = MISSING
    copy_paste: float = MISSING


@dataclass
class MlflowConfig:
    # false: train without MLflow (no run, no server): the baseline the benchmarks compare tracking against.
    enabled: bool = True
    # null: MLFLOW_TRACKING_URI, else a SQLite file in the working folder (see train.tracking.run).
    tracking_uri: Optional[str] = None
    experiment_name: str = MISSING
    run_name: str = MISSING
    tags: Dict[str, str] = field(default_factory=dict)
    # Log best.pt as an MLflow pyfunc model (`model`: images in, detections out) when training succeeds.
    log_model: bool = True
    # Also register it as a new version of this model; `champion_alias` moves to it only if it beats the
    # current champion on sweep.objective (train/model/registry.py).
    registered_model_name: Optional[str] = None
    champion_alias: str = "champion"
    # How long to wait at start for the tracking server and artifact store to answer before giving up.
    startup_timeout_s: float = 15.0
    # How long, once training ends, to wait for an unreachable server before keeping the undelivered
    # record locally (train/tracking/spool.py). Keep it well under the Job's terminationGracePeriodSeconds.
    delivery_timeout_s: float = 120.0


@dataclass
class SweepConfig:
    # What a sweep optimises: a metric name as logged (sanitized), its last-epoch value per trial.
    objective: str = "metrics/mAP_0.5_0.95"
    direction: str = "maximize"
    # Trials at once with hydra/launcher=parallel (joblib); each gets its own GPU when there are several.
    n_jobs: int = 2


@dataclass
class ReproduceConfig:
    # An MLflow run id: train again from that run's recorded config (python -m train.reproduce <run id>).
    run_id: Optional[str] = None
    # Train even when today's code or data differ from the run's (they are still reported).
    allow_mismatch: bool = False


@dataclass
class PathsConfig:
    # Datasets, fonts and other downloads-in-waiting live here, outside the source tree.
    cache_dir: str = MISSING
    outputs_dir: str = MISSING


@dataclass
class Config:
    # Typed defaults (not MISSING), so a group option merged over them is checked field by field.
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hyp: HypConfig = field(default_factory=HypConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)


def register_schema() -> None:
    """Make `Config` available to conf/config.yaml's defaults list as `config_schema`."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def _utcnow(fmt: str) -> str:
    return datetime.now(timezone.utc).strftime(fmt)


if not OmegaConf.has_resolver("utcnow"):
    # Hydra's `now` is local time; run names promise UTC.
    OmegaConf.register_new_resolver("utcnow", _utcnow, use_cache=True)

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
    _check(t.cache in (None, "ram", "disk"), "train.cache", f"must be null, ram or disk, got {t.cache!r}")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")

    _check(cfg.hyp.lr0 > 0, "hyp.lr0", f"must be > 0, got {cfg.hyp.lr0}")
    for key in ("fliplr", "flipud", "mosaic", "mixup", "copy_paste"):
        value = cfg.hyp[key]
        _check(0.0 <= value <= 1.0, f"hyp.{key}", f"is a probability, must be in [0, 1], got {value}")

    from train.yolo import model_yaml

    _check(model_yaml(cfg.model.cfg).is_file(), "model.cfg",
           f"no such model yaml: {cfg.model.cfg} (a name from yolov5/models/ or an absolute path)")
    weights = cfg.model.weights
    if weights:
        # YOLOv5 looks any relative name up on the Hugging Face hub and GitHub first: never offline-safe.
        _check(Path(weights).is_absolute(), "model.weights",
               f"must be '' (train from scratch) or an absolute path to a local .pt file, got {weights!r}")
        _check(Path(weights).is_file(), "model.weights", f"no such file: {weights}")
        _check(os.access(weights, os.R_OK), "model.weights", f"not readable by this user: {weights}")
        with open(weights, "rb") as f:
            magic = f.read(4)
        _check(magic == b"PK\x03\x04" or magic[:1] == b"\x80", "model.weights",
               f"not a PyTorch checkpoint (neither torch.save's zip nor a pickle): {weights}")

    d = cfg.data
    _check(d.name in DATASET_NAMES, "data.name", f"must be one of {', '.join(DATASET_NAMES)}, got {d.name!r}")
    if d.root is not None:
        _check(Path(d.root).is_dir(), "data.root", f"no such folder: {d.root}")
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
    if m.tracking_uri:
        scheme = m.tracking_uri.split(":", 1)[0].split("+", 1)[0] if ":" in m.tracking_uri else ""
        _check(scheme in _TRACKING_SCHEMES, "mlflow.tracking_uri",
               f"unsupported scheme {scheme!r} in {redact(m.tracking_uri)!r} (use one of: "
               f"{', '.join(s for s in _TRACKING_SCHEMES if s)}, or a local path)")

    _check(cfg.sweep.direction in ("maximize", "minimize"), "sweep.direction",
           f"must be maximize or minimize, got {cfg.sweep.direction!r}")
    _check(cfg.sweep.n_jobs >= 1, "sweep.n_jobs", f"must be >= 1, got {cfg.sweep.n_jobs}")
    _check(bool(cfg.mlflow.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")
    _check(bool(cfg.mlflow.run_name.strip()), "mlflow.run_name", "must not be empty")


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain data, the form it is logged in."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
