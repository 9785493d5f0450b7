"""The detector's pyfunc contract and the alias rule, on an untrained checkpoint and a local SQLite registry.

An untrained YOLOv5n saved the way training leaves best.pt (half precision, no EMA) is built in seconds; its
detections are noise, but the contract (columns, types, pixel boxes, thresholds as params) is the same.
Whether a trained model finds the shapes is tests/e2e/test_model.py's question.
"""

from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REPO
from train.data.synthetic import CLASS_NAMES, SyntheticSpec, generate
from train.model.detector import OUTPUT_DTYPES, YoloDetector
from train.model.registry import (REQUIREMENTS_TXT, SERVING_PACKAGES, example_image, serving_requirements,
                                  takes_alias)

SIZES = ((64, 64), (120, 80))  # width, height: one square, one the letterbox must pad


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # The offline switches go into os.environ (they must precede `import yolov5`): restored afterwards, so the
    # rest of the session's subprocess environments are unchanged.
    saved = dict(os.environ)
    os.environ["YOLOV5_MLFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from train import offline

    offline.apply(Path(os.environ["YOLOV5_MLFLOW_CACHE"]))
    import torch
    from yolov5.models.yolo import DetectionModel

    from train.yolo import model_yaml

    torch.manual_seed(0)
    model = DetectionModel(str(model_yaml("yolov5n.yaml")), ch=3, nc=len(CLASS_NAMES))
    model.names = list(CLASS_NAMES)
    path = tmp_path_factory.mktemp("weights") / "best.pt"
    torch.save({"model": model.half(), "ema": None, "epoch": -1, "opt": {"imgsz": 64}}, path)
    yield path
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def detector(checkpoint) -> YoloDetector:
    model = YoloDetector()
    model.load_context(mlflow.pyfunc.PythonModelContext(artifacts={"weights": str(checkpoint)},
                                                        model_config={"imgsz": 64}))
    return model


def _encoded(width: int, height: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def _images() -> pd.DataFrame:
    return pd.DataFrame({"image": [_encoded(*SIZES[0], "PNG"), _encoded(*SIZES[1], "JPEG")]})


def test_one_row_per_detection_in_pixels_of_the_original_image(detector):
    found = detector.predict(None, _images(), {"conf_thres": 0.0})  # an untrained model scores ~0
    assert list(found.columns) == list(OUTPUT_DTYPES)
    assert found.dtypes.astype(str).to_dict() == OUTPUT_DTYPES
    assert set(found["image"]) == {0, 1}
    assert (found["class_name"] == found["class_id"].map(dict(enumerate(CLASS_NAMES)))).all()
    assert found["confidence"].between(0, 1).all()
    for index, (width, height) in enumerate(SIZES):
        boxes = found[found["image"] == index]
        assert (boxes["x_min"] >= 0).all() and (boxes["x_max"] <= width).all()
        assert (boxes["y_min"] >= 0).all() and (boxes["y_max"] <= height).all()
        assert (boxes["x_min"] <= boxes["x_max"]).all() and (boxes["y_min"] <= boxes["y_max"]).all()
    assert found[found["image"] == 1]["x_max"].max() > 64  # scaled back from the 64 px model input


def test_no_detection_is_zero_rows_with_the_same_columns(detector):
    for found in (detector.predict(None, _images()),  # default conf_thres 0.25: nothing from noise
                  detector.predict(None, pd.DataFrame({"image": []}))):
        assert found.empty and found.dtypes.astype(str).to_dict() == OUTPUT_DTYPES


def test_base64_text_is_the_same_image(detector):
    as_bytes = detector.predict(None, _images(), {"conf_thres": 0.0})
    as_text = detector.predict(None, _images().map(lambda b: base64.b64encode(b).decode()), {"conf_thres": 0.0})
    pd.testing.assert_frame_equal(as_bytes, as_text)


def test_requirements_are_the_projects_pins():
    pinned = dict(line.split("==") for line in REQUIREMENTS_TXT.read_text().splitlines() if "==" in line)
    assert serving_requirements() == [f"{name}=={pinned[name]}" for name in SERVING_PACKAGES]


def test_mlflows_map_of_installed_packages_is_made_once_per_environment(tmp_path):
    """MLflow reads every installed distribution's file list (0.7 s) for its requirements check at the first model
    save of a process; remember_package_map keeps that map, so the next process (run) takes it from the cache.
    Fresh processes: this one's MLflow may have made the map already."""
    script = ("import sys, time\n"
              "from pathlib import Path\n"
              "import mlflow.utils.requirements_utils as ru\n"
              "from train.tracking.mlflow_internals import remember_package_map\n"
              "assert ru._MODULES_TO_PACKAGES is None, 'made before'\n"
              "if sys.argv[2] == 'remembered':  # the second process must not read the distributions again\n"
              "    import importlib_metadata\n"
              "    importlib_metadata.packages_distributions = lambda: sys.exit('read the distributions again')\n"
              "remember_package_map(Path(sys.argv[1]))\n"
              "assert ru._MODULES_TO_PACKAGES['yolov5'] == ['yolov5'], ru._MODULES_TO_PACKAGES.get('yolov5')\n"
              "from train.model.registry import serving_requirements\n"
              "ru.warn_dependency_requirement_mismatches(serving_requirements())\n")
    for which in ("first", "remembered"):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), which], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "mismatches" not in proc.stderr  # the serving pins are what is installed
    [kept] = (tmp_path / "environments").glob("*.modules.json")
    assert '"yolov5"' in kept.read_text()


def test_what_is_kept_per_environment_outlives_outputs_in_the_working_folder_and_is_remade_when_damaged(
        tmp_path, monkeypatch):
    from train.tracking.lineage import kept_per_environment, packages_state

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `python -m train` puts the working folder first on sys.path
    state = packages_state()
    (tmp_path / "outputs").mkdir()  # a run writes there: the installed packages are the same
    assert packages_state() == state

    made = []

    def make():
        made.append(1)
        return '{"yolov5": ["yolov5"]}'

    def keep():
        return kept_per_environment(tmp_path / "cache", ".modules.json", make, lambda text: text.startswith("{"))

    assert keep() == keep() == '{"yolov5": ["yolov5"]}' and made == [1]
    [kept] = (tmp_path / "cache" / "environments").iterdir()  # and no partial file left beside it
    kept.write_text("half a fi")  # damaged (by hand: a write is whole or not at all)
    assert keep() == '{"yolov5": ["yolov5"]}' and made == [1, 1]


def test_example_image_is_the_first_validation_image(tmp_path):
    root = generate(SyntheticSpec(train_images=1, val_images=2, image_size=32, seed=0), tmp_path)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n")
    assert example_image(data_yaml) == root / "images" / "val" / "val_00000.jpg"


@pytest.mark.parametrize(("value", "held", "direction", "moves"), [
    (0.5, math.nan, "maximize", True),  # no champion yet
    (0.6, 0.5, "maximize", True),
    (0.4, 0.5, "maximize", False),
    (0.5, 0.5, "maximize", False),  # a tie keeps the champion
    (math.nan, 0.5, "maximize", False),
    (math.nan, math.nan, "maximize", False),  # a failed run never becomes champion
    (0.4, 0.5, "minimize", True),
    (0.6, 0.5, "minimize", False),
])
def test_alias_moves_only_to_a_strictly_better_objective(value, held, direction, moves):
    assert takes_alias(value, held, direction) is moves


def test_logged_registered_and_served_through_the_alias(checkpoint, tmp_path, monkeypatch):
    """A local SQLite registry (no server): log, register a first and a worse version, load @champion."""
    from train.model.registry import log_detector, register_if_better

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("detector", artifact_location=(tmp_path / "artifacts").as_uri())
    example = tmp_path / "example.png"
    example.write_bytes(_encoded(*SIZES[1], "PNG"))
    versions = []
    for score in (0.5, 0.4):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metric("metrics/mAP_0.5_0.95", score)
            uri = log_detector(checkpoint, 64, example)
        versions.append(register_if_better(uri, run.info.run_id, "shapes"))
    assert versions == [("1", True), ("2", False)]
    assert str(client.get_model_version_by_alias("shapes", "champion").version) == "1"
    second = client.get_model_version("shapes", "2")
    assert second.run_id == run.info.run_id
    assert second.tags == {"objective": "metrics/mAP_0.5_0.95", "objective_value": "0.4",
                           "became_champion": "false", "compared_with": "version 1 (0.5)"}

    served = mlflow.pyfunc.load_model("models:/shapes@champion")
    assert served.metadata.get_input_schema().input_names() == ["image"]
    assert list(served.predict(_images(), params={"conf_thres": 0.0}).columns) == list(OUTPUT_DTYPES)


def test_the_model_code_is_the_part_of_train_a_serving_process_imports(tmp_path):
    """The copy logged with the model (code_paths) imports the detector on its own: nothing else of `train`."""
    import subprocess
    import sys

    from train.model.registry import MODEL_CODE, _model_code

    package = _model_code(tmp_path)
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*.py")) == sorted(MODEL_CODE)
    probe = ("import train.model.detector as d, train.offline; "
             f"assert d.__file__.startswith({str(tmp_path)!r}), d.__file__")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
