"""The detector as an MLflow pyfunc model (saved for a run's LoggedModel, or logged into a run after the fact), and
registered: the alias moves only to a better model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from train.model.detector import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES, OUTPUT_DTYPES, YoloDetector

TRAIN_PACKAGE = Path(__file__).resolve().parent.parent
# What a serving process imports from this project: unpickling YoloDetector and its load_context. The rest
# of `train` (Hydra, training, tracking) never runs there, and each file is one more upload per logged model.
MODEL_CODE = ("__init__.py", "offline.py", "quiet.py", "model/__init__.py", "model/detector.py")
REQUIREMENTS_TXT = TRAIN_PACKAGE.parent / "requirements.txt"
# What loading and predicting import; the rest of requirements.txt (Hydra, Optuna, Docker, ...) only trains.
SERVING_PACKAGES = ("yolov5", "torch", "torchvision", "mlflow", "pandas", "numpy", "pillow", "setuptools")
_MLFLOW_TYPES = {"int64": DataType.long, "float64": DataType.double, "object": DataType.string}


def serving_requirements() -> List[str]:
    """Pins from requirements.txt (the project's single source of truth); the installed version where it has none.

    Explicit, because MLflow's requirement inference imports the model in a subprocess: tens of seconds.
    """
    pins: Dict[str, str] = {}
    if REQUIREMENTS_TXT.is_file():
        for line in REQUIREMENTS_TXT.read_text().splitlines():
            name, pinned, version = line.split("#")[0].strip().partition("==")
            if pinned:
                pins[name.strip().lower()] = version.strip()
    return [f"{name}=={pins.get(name) or metadata.version(name)}" for name in SERVING_PACKAGES]


def detector_signature(conf_thres: float = DEFAULT_CONF_THRES, iou_thres: float = DEFAULT_IOU_THRES) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(_MLFLOW_TYPES[dtype], column) for column, dtype in OUTPUT_DTYPES.items()]),
        # Defaults here are what predict gets when a caller passes no params.
        params=ParamSchema([ParamSpec("conf_thres", DataType.double, conf_thres),
                            ParamSpec("iou_thres", DataType.double, iou_thres)]))


def example_image(data_yaml: Path) -> Path:
    """The first image of the validation split of a YOLOv5 data yaml (as train.data.prepare writes it)."""
    from train.data import split_images

    layout = yaml.safe_load(Path(data_yaml).read_text())
    return split_images(Path(layout["path"]), layout["val"], "data")[0]


def _model_code(folder: Path) -> Path:
    """The MODEL_CODE files of the `train` package, copied under `folder`; the package folder."""
    package = folder / TRAIN_PACKAGE.name
    for relative in MODEL_CODE:
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TRAIN_PACKAGE / relative, package / relative)
    return package


def log_detector(best_pt: Path, imgsz: int, example_image: Path, run_id: Optional[str] = None,
                 conf_thres: float = DEFAULT_CONF_THRES, iou_thres: float = DEFAULT_IOU_THRES, step: int = 0) -> str:
    """Log `best_pt` as the pyfunc model `model` of the active run (or of `run_id`); its model URI.

    imgsz: the training image size. example_image: an encoded image file, stored as the input example;
    MLflow also predicts on it through the JSON serving path before returning, so a model that cannot load
    or predict is reported (as a warning) at logging time. step: the epoch whose weights best_pt holds; MLflow
    links the run's metrics at that step to the model. For logging best.pt into a run after the fact; a training
    run logs its models through train.tracking.checkpoint_models (save_detector_model below), without Model.log's
    read of every metric's history.
    """
    active = mlflow.active_run()
    if run_id is None and active is None:
        raise ValueError("log_detector needs an active run or a run_id: the model belongs to a training run")
    in_run = run_id is None or (active is not None and active.info.run_id == run_id)
    with nullcontext() if in_run else mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as code:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=YoloDetector(), artifacts={"weights": str(best_pt)},
            model_config={"imgsz": int(imgsz)}, signature=detector_signature(conf_thres, iou_thres),
            input_example=pd.DataFrame({"image": [Path(example_image).read_bytes()]}), step=step,
            # The model's part of `train` travels with it: a fresh process unpickles YoloDetector from it.
            code_paths=[str(_model_code(Path(code)))], pip_requirements=serving_requirements())
    return info.model_uri


def _serving_check_key(imgsz: int, conf_thres: float, iou_thres: float) -> str:
    """What the serving check's outcome depends on besides the weights: the model code, the serving packages'
    versions and the model's settings."""
    digest = hashlib.sha256()
    for relative in MODEL_CODE:
        digest.update((TRAIN_PACKAGE / relative).read_bytes())
    digest.update(repr((serving_requirements(), int(imgsz), conf_thres, iou_thres)).encode())
    return digest.hexdigest()[:32]


@contextmanager
def _serving_check_warnings() -> Iterator[List[str]]:
    """The warnings MLflow logs when the serving check fails (it never raises), collected while in the block."""
    failures: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "validate serving input" in record.getMessage():
                failures.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("mlflow.models.model")
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)


def save_detector_model(weights: Path, imgsz: int, folder: Path, model, example: Optional[Path] = None,
                        checks: Optional[Path] = None) -> Path:
    """`weights` saved under `folder` as the pyfunc model the LoggedModel `model` stands for, with what log_detector
    logs (flavor, code, signature, requirements), so any of the run's models can be registered and served; the
    model folder. Nothing here talks to the server.

    example: an encoded image, the input example; the model is then loaded again and predicts on it through the
    serving path (MLflow's own check, which logs a warning when it fails), once per model code, serving packages
    and image size, as remembered in the folder `checks`. Without it (a checkpoint) no example and no check:
    a checkpoint differs from the final model only in its weights.
    """
    from train.tracking.mlflow_internals import check_serving

    target = folder / "model"
    mlflow_model = Model(artifact_path=model.artifact_location, run_id=model.source_run_id,
                         model_uuid=model.model_id, model_id=model.model_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        mlflow.pyfunc.save_model(
            path=str(target), python_model=YoloDetector(), artifacts={"weights": str(weights)},
            model_config={"imgsz": int(imgsz)}, signature=detector_signature(), mlflow_model=mlflow_model,
            input_example=pd.DataFrame({"image": [example.read_bytes()]}) if example else None,
            code_paths=[str(_model_code(folder / "code"))], pip_requirements=serving_requirements())
    if example is not None:
        passed = checks / f"{_serving_check_key(imgsz, DEFAULT_CONF_THRES, DEFAULT_IOU_THRES)}.passed" if checks else None
        if passed is None or not passed.is_file():
            with _serving_check_warnings() as failures:
                check_serving(target)
            if passed is not None and not failures:
                passed.parent.mkdir(parents=True, exist_ok=True)
                passed.touch()
    return target


def takes_alias(value: float, held: float, direction: str) -> bool:
    """Strictly better only, so a tie keeps the holder; NaN never wins, and a holder scored NaN always loses."""
    if math.isnan(value):
        return False
    return math.isnan(held) or (value > held if direction == "maximize" else value < held)


def _run_metric(client: mlflow.MlflowClient, run_id: Optional[str], objective: str) -> float:
    if not run_id:
        return math.nan
    try:
        return client.get_run(run_id).data.metrics.get(objective, math.nan)
    except MlflowException:  # a run that no longer exists (garbage-collected)
        return math.nan


def register_if_better(model_uri: str, run_id: str, name: str, alias: str = "champion",
                       objective: str = "metrics/mAP_0.5_0.95", direction: str = "maximize") -> Tuple[str, bool]:
    """Register `model_uri` as a new version of `name`; move `alias` to it only if it beats the alias holder.

    Compared on the runs' logged `objective` (its sanitized name; the run's last logged value) by takes_alias.
    No holder, or one whose run is gone or lacks the metric, counts as NaN. Returns (version, moved); the
    version is tagged with its objective value, the holder it was compared with and whether it took the alias.
    Not atomic: two registrations racing on one name may both read the same holder.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be maximize or minimize, not {direction!r}")
    client = mlflow.MlflowClient()
    value = _run_metric(client, run_id, objective)
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        holder = None
    held = _run_metric(client, holder.run_id, objective) if holder else math.nan
    moved = takes_alias(value, held, direction)

    version = mlflow.register_model(model_uri, name).version
    tags = {"objective": objective, "objective_value": str(value), f"became_{alias}": str(moved).lower(),
            "compared_with": f"version {holder.version} ({held})" if holder else "none"}
    for key, tag in tags.items():
        client.set_model_version_tag(name, version, key, tag)
    if moved:
        client.set_registered_model_alias(name, alias, version)
    return str(version), moved
