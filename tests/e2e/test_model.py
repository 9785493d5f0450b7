"""best.pt as a registered MLflow model: logged from a real training run, served from `@champion` elsewhere.

Two trainings through `python -m train` against the real tracking server (S3 artifacts, SQLite registry):
a strong one (the recipe's defaults: 20 epochs, a few minutes on a CPU; 10 epochs find only half the shapes)
and a weak one (tiny, one epoch). The weak model is
registered first and takes the alias, the strong one takes it over, and the weak one registered again leaves
it. A fresh interpreter without the repository then loads `models:/<name>@champion` and finds the shapes of
images it never saw.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import TINY, TrackingServer, client_env, train_cli, why
from train.data.synthetic import CLASS_NAMES, SyntheticSpec, generate
from train.model.detector import OUTPUT_DTYPES

EXPERIMENT = "e2e-model"
NAME = "e2e-synthetic-shapes"
MIN_IOU = 0.5
MIN_RECALL = 0.8  # of the true shapes, found with the right class at IoU >= MIN_IOU (conf >= 0.25)

# Runs in a fresh interpreter from an empty folder: nothing of the repository is importable, so the `train`
# code the model needs must come with the model (code_paths).
SERVE = textwrap.dedent("""
    import importlib.util, json, sys, time
    assert importlib.util.find_spec("train") is None, "the repository is importable: this proves nothing"
    import mlflow.pyfunc, pandas as pd
    start = time.monotonic()
    model = mlflow.pyfunc.load_model(sys.argv[1])
    loaded = time.monotonic()
    found = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in sys.argv[3:]]}))
    done = time.monotonic()
    json.dump({"load_s": loaded - start, "predict_s": done - loaded, "detections": found.to_dict("records")},
              open(sys.argv[2], "w"))
""")


def _train_registering(server: TrackingServer, cache_dir: Path, workdir: Path) -> Tuple[str, Tuple[str, bool]]:
    """A weak model (tiny, one epoch) trained with mlflow.registered_model_name: (run id, (version, moved))."""
    env = client_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME=EXPERIMENT)
    proc = train_cli(workdir, cache_dir, [*TINY, "train.epochs=1", f"mlflow.registered_model_name={NAME}"], env=env)
    assert proc.returncode == 0, why(proc)
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"Registered {NAME} version ")]
    client = server.client()
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                               order_by=["attributes.start_time DESC"], max_results=1)
    return run.info.run_id, (line.split()[3].rstrip(";"), line.endswith("champion moved to it"))


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> Path:
    """Synthetic images the models never trained on (another seed), with their YOLO labels."""
    return generate(SyntheticSpec(train_images=0, val_images=12, image_size=128, seed=2024),
                    tmp_path_factory.mktemp("unseen"))


@pytest.fixture(scope="module")
def registered(tracking_server, cache_dir, tmp_path_factory, recipe_run) -> Dict[str, object]:
    """A weak training registers itself (and takes the alias: there is no champion yet); the recipe run's
    model, strong, is registered next and takes it over; a second weak training registers and leaves it."""
    work = tmp_path_factory.mktemp("work")
    weak, first = _train_registering(tracking_server, cache_dir, work)
    saved = dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_server.uri
    try:
        from train.model.registry import register_if_better

        second = register_if_better(f"runs:/{recipe_run.info.run_id}/model", recipe_run.info.run_id, NAME)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    weak_again, third = _train_registering(tracking_server, cache_dir, work)
    return {"weak": weak, "weak_again": weak_again, "strong": recipe_run.info.run_id,
            "steps": [first, second, third]}


@pytest.mark.slow
def test_alias_moves_to_a_better_model_only(registered, tracking_server):
    assert registered["steps"] == [("1", True), ("2", True), ("3", False)]
    client = tracking_server.client()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    runs = {str(v.version): v.run_id for v in client.search_model_versions(f"name='{NAME}'")}
    assert runs == {"1": registered["weak"], "2": registered["strong"], "3": registered["weak_again"]}
    third = client.get_model_version(NAME, "3").tags
    assert third["became_champion"] == "false" and third["compared_with"].startswith("version 2 (")
    assert float(third["objective_value"]) < float(client.get_model_version(NAME, "2").tags["objective_value"])


@pytest.mark.slow
def test_a_model_is_logged_with_signature_and_example(registered, tracking_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    info = mlflow.models.get_model_info(f"models:/{NAME}/2")  # metadata only: no weights fetched
    assert info.run_id == registered["strong"]
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.outputs.input_names() == list(OUTPUT_DTYPES)
    assert {p.name: p.default for p in info.signature.params.params} == {"conf_thres": 0.25, "iou_thres": 0.45}
    assert info.saved_input_example_info["type"] == "dataframe"

    # Logged at the epoch best.pt holds (YOLOv5's fitness, 0.1 mAP_0.5 + 0.9 mAP_0.5:0.95, ties to the later),
    # so the metrics MLflow links to the model are that epoch's.
    client = mlflow.MlflowClient()
    fitness: Dict[int, float] = {}
    for key, weight in (("metrics/mAP_0.5", 0.1), ("metrics/mAP_0.5_0.95", 0.9)):
        for point in client.get_metric_history(registered["strong"], key):
            fitness[point.step] = fitness.get(point.step, 0.0) + weight * point.value
    steps = {metric.step for metric in mlflow.get_logged_model(info.model_id).metrics}
    assert len(steps) == 1 and fitness[steps.pop()] >= max(fitness.values()) - 1e-4  # results.csv keeps 5 digits


def _iou(a: Tuple[float, ...], b: Tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _truths(label: Path, size: int) -> List[Tuple[int, Tuple[float, ...]]]:
    shapes = []
    for line in label.read_text().splitlines():
        cls, cx, cy, w, h = (float(v) for v in line.split())
        shapes.append((int(cls), ((cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size)))
    return shapes


@pytest.mark.slow
def test_champion_finds_the_shapes_in_a_fresh_process(registered, tracking_server, unseen, tmp_path):
    images = sorted((unseen / "images" / "val").glob("*.jpg"))
    env = {k: v for k, v in client_env(MLFLOW_TRACKING_URI=tracking_server.uri).items() if k != "PYTHONPATH"}
    result = tmp_path / "detections.json"
    proc = subprocess.run([sys.executable, "-c", SERVE, f"models:/{NAME}@champion", str(result), *map(str, images)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, why(proc)
    served = json.loads(result.read_text())
    print(f"\nfresh process: load_model {served['load_s']:.1f} s, predict {len(images)} images "
          f"{served['predict_s']:.2f} s, {len(served['detections'])} detections")

    found = missed = 0
    for index, image in enumerate(images):
        mine = [d for d in served["detections"] if d["image"] == index]
        for cls, box in _truths(unseen / "labels" / "val" / f"{image.stem}.txt", 128):
            hit = any(d["class_id"] == cls and d["class_name"] == CLASS_NAMES[cls]
                      and _iou(box, (d["x_min"], d["y_min"], d["x_max"], d["y_max"])) >= MIN_IOU for d in mine)
            found, missed = found + hit, missed + (not hit)
    print(f"champion: {found} of {found + missed} shapes found (IoU >= {MIN_IOU}, right class)")
    assert found / (found + missed) >= MIN_RECALL


@pytest.mark.slow
def test_fine_tuning_from_the_champion_keeps_its_accuracy_and_links_back_to_it(registered, tracking_server,
                                                                               cache_dir, tmp_path):
    """Run B starts from models:/<name>@champion (the recipe run A's model, version 2) on A's data, with the
    fine-tuning preset: after one epoch it is nearly as good as A at its best, and its record leads back to A."""
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=f"{EXPERIMENT}-finetune")
    proc = train_cli(tmp_path, cache_dir, [f"model.weights=models:/{NAME}@champion", "hyp=finetune",
                                           "train.epochs=1", "train.workers=0"], env=env)
    assert proc.returncode == 0, why(proc)
    client = tracking_server.client()
    [b] = client.search_runs([client.get_experiment_by_name(f"{EXPERIMENT}-finetune").experiment_id])
    a_best = max(m.value for m in client.get_metric_history(registered["strong"], "metrics/mAP_0.5"))
    [b_first] = [m.value for m in client.get_metric_history(b.info.run_id, "metrics/mAP_0.5") if m.step == 0]
    print(f"fine-tuning: A's best mAP_0.5 {a_best:.3f}, B's after its first epoch {b_first:.3f}")
    assert b_first >= 0.8 * a_best

    tags = b.data.tags
    version = client.get_model_version(NAME, "2")
    assert tags["weights"] == f"models:/{NAME}@champion"
    assert (tags["weights.model_name"], tags["weights.model_version"]) == (NAME, "2")
    assert tags["weights.run_id"] == registered["strong"] == version.run_id
    local = client.download_artifacts(registered["strong"], "training-output/weights/best.pt", str(tmp_path))
    assert tags["weights.sha256"] == hashlib.sha256(Path(local).read_bytes()).hexdigest()
    # And to A's logged model (MLflow 3), whose page lists A's metrics and data.
    experiment = client.get_run(registered["strong"]).info.experiment_id
    [logged] = client.search_logged_models([experiment], filter_string=f"source_run_id = '{registered['strong']}'")
    assert tags["weights.model_id"] == logged.model_id


class _Releases(http.server.SimpleHTTPRequestHandler):
    requests: List[str] = []

    def log_message(self, *args) -> None:
        _Releases.requests.append(self.path)


@pytest.mark.slow
def test_a_release_name_downloads_once_from_the_release_url(recipe_run, tracking_server, tmp_path):
    """model.weights=yolov5n.pt from fetch.release_url (a local HTTP server standing in for GitHub's releases),
    once: the second run finds it in the cache and makes no request."""
    release = tmp_path / "v7.0"
    release.mkdir()
    tracking_server.client().download_artifacts(recipe_run.info.run_id, "training-output/weights/best.pt",
                                                str(tmp_path))
    (tmp_path / "best.pt").rename(release / "yolov5n.pt")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Releases, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v7.0"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=f"{EXPERIMENT}-release",
                     YOLOV5_RELEASE_URL=url)
    try:
        for _ in range(2):
            proc = train_cli(tmp_path, tmp_path / "cache", [*TINY, "train.epochs=1", "model.weights=yolov5n.pt",
                                                            "hyp=finetune"], env=env)
            assert proc.returncode == 0, why(proc)
    finally:
        server.shutdown()
    assert [r for r in _Releases.requests if "yolov5n.pt" in r] == ["/v7.0/yolov5n.pt"]
    client = tracking_server.client()
    runs = client.search_runs([client.get_experiment_by_name(f"{EXPERIMENT}-release").experiment_id])
    sha = hashlib.sha256((release / "yolov5n.pt").read_bytes()).hexdigest()
    assert {(r.data.tags["weights"], r.data.tags["weights.sha256"], r.info.status) for r in runs} == {
        ("yolov5n.pt", sha, "FINISHED")}
