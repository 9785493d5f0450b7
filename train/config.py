"""The typed shape of the Hydra config (conf/): types only; every value, default included, lives in conf/.

The dataclasses are registered as Hydra's schema, so a value of the wrong type or an unknown key
fails while the config is composed. The rules types cannot express are in train/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_NAMES = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")


@dataclass
class SyntheticDataConfig:
    train_images: int = MISSING
    val_images: int = MISSING
    image_size: int = MISSING
    seed: int = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    # The image size this dataset is meant for; train.imgsz follows it unless overridden.
    imgsz: int = MISSING
    # An existing dataset folder in coco128 layout; null: prepare one under paths.cache_dir.
    root: Optional[str] = MISSING
    # Where coco128 is downloaded from when `root` is null and the cache holds no copy.
    download_url: Optional[str] = MISSING
    download_timeout_s: float = MISSING
    synthetic: Optional[SyntheticDataConfig] = MISSING
    # data=yolo: a dataset yaml, a folder holding one, or a zip of one: a local path, s3://, http(s)://,
    # runs:/ or mlflow-artifacts: (train/data/yolo.py).
    source: Optional[str] = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    # A model yaml shipped in yolov5/models/, or an absolute path to one of your own.
    cfg: str = MISSING
    # Starting weights: '' trains from scratch; else a local path, a YOLOv5 release name (yolov5s.pt), s3://,
    # http(s)://, runs:/, mlflow-artifacts: or models:/<name>@<alias> (train/model/weights.py).
    weights: str = MISSING


@dataclass
class TrainConfig:
    epochs: int = MISSING
    batch: int = MISSING
    imgsz: int = MISSING
    # YOLOv5 device string: '' picks cuda:0 when available, else cpu; or 'cpu', '0', '0,1'.
    device: str = MISSING
    workers: int = MISSING
    seed: int = MISSING
    optimizer: str = MISSING
    cos_lr: bool = MISSING
    label_smoothing: float = MISSING
    patience: int = MISSING
    # Cache decoded images: null (off), 'ram' or 'disk'.
    cache: Optional[str] = MISSING
    rect: bool = MISSING
    single_cls: bool = MISSING
    noval: bool = MISSING
    noplots: bool = MISSING
    # An MLflow run id: continue that run from the last checkpoint in its artifacts (train/tracking/resume.py).
    resume: Optional[str] = MISSING


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
class SystemMetricsConfig:
    # MLflow's system metrics (system/...: CPU, memory, disk, network; per GPU through NVML), by a thread of the
    # training process (train/tracking/run.py).
    enabled: bool = MISSING
    # A sample every this many seconds; each logged point is the mean of samples_before_logging samples.
    sampling_interval_s: float = MISSING
    samples_before_logging: int = MISSING


@dataclass
class MlflowConfig:
    # false: train without MLflow (no run, no server): the baseline the benchmarks compare tracking against.
    enabled: bool = MISSING
    # null: MLFLOW_TRACKING_URI, else a SQLite file in the working folder (see train.tracking.run).
    tracking_uri: Optional[str] = MISSING
    experiment_name: str = MISSING
    run_name: str = MISSING
    tags: Dict[str, str] = MISSING
    # Log best.pt as an MLflow pyfunc model (`model`: images in, detections out) when training succeeds.
    log_model: bool = MISSING
    # Also register it as a new version of this model; `champion_alias` moves to it only if it beats the
    # current champion on sweep.objective (train/model/registry.py).
    registered_model_name: Optional[str] = MISSING
    champion_alias: str = MISSING
    # YOLOv5's plots as the run's MLflow images and its final validation as tables, sent in the background
    # (train/tracking/plots.py); nothing with train.noplots, when YOLOv5 draws nothing.
    log_plots: bool = MISSING
    # How long to wait at start for the tracking server and artifact store to answer before giving up.
    startup_timeout_s: float = MISSING
    # How long, once training ends, to wait for an unreachable server before keeping the undelivered
    # record locally (train/tracking/spool.py). Keep it well under the Job's terminationGracePeriodSeconds.
    delivery_timeout_s: float = MISSING
    # Upload the resume checkpoint during training, in the background, at an epoch's end when this many epochs or
    # minutes have passed since the last upload (0: that interval off; both 0: only at the end of training), so a
    # pod lost without a word (node loss, out of memory) resumes from it (train/tracking/checkpoints.py).
    checkpoint_every_epochs: int = MISSING
    checkpoint_every_minutes: float = MISSING
    system_metrics: SystemMetricsConfig = field(default_factory=SystemMetricsConfig)


@dataclass
class SweepConfig:
    # What a sweep optimises: a metric name as logged (sanitized), its last-epoch value per trial.
    objective: str = MISSING
    direction: str = MISSING
    # Trials at once with hydra/launcher=parallel (joblib); each gets its own GPU when there are several.
    n_jobs: int = MISSING


@dataclass
class ReproduceConfig:
    # An MLflow run id: train again from that run's recorded config (python -m train.reproduce <run id>).
    run_id: Optional[str] = MISSING
    # Train even when today's code or data differ from the run's (they are still reported).
    allow_mismatch: bool = MISSING


@dataclass
class FetchConfig:
    # Where release names (yolov5s.pt) download from; a mirror's URL offline or behind a proxy.
    release_url: str = MISSING
    # How long one request to a dataset's or weights' source may take before the run is refused.
    timeout_s: float = MISSING
    # Objects of an S3 folder downloaded at once.
    max_concurrency: int = MISSING


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
    fetch: FetchConfig = field(default_factory=FetchConfig)
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


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain data, the form it is logged in."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
