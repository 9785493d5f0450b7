"""Bad input is refused before any run exists; a failure once the run exists is recorded in it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY, client_env
from train.data.synthetic import SyntheticSpec, generate

BAD_INPUTS = [
    (["train.epochs=abc"], "train.epochs"),
    (["train.epochs=-1"], "train.epochs"),
    (["train.imgsz=100"], "train.imgsz"),
    (["model=nope"], "model"),
    (["train.batch=0"], "train.batch"),
    (["train.device=gpu"], "train.device"),
    (["train.nope=1"], "train.nope"),
    (["model.weights=yolov5s.pt"], "model.weights"),  # a hub name: never fetched
    (["model.weights=/nonexistent/best.pt"], "model.weights"),
    (["data.root=/nonexistent"], "data.root"),
    (["hyp.mosaic=2"], "hyp.mosaic"),
]


@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_no_run(overrides, key, train, tracking_server):
    before = set(tracking_server.run_ids())
    proc = train(*overrides, env=client_env(MLFLOW_TRACKING_URI=tracking_server.uri))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {key}:"), lines[0]
    assert set(tracking_server.run_ids()) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_coco128_unreachable_fails_fast_before_any_run(train, tracking_server, tmp_path):
    before = set(tracking_server.run_ids())
    url = f"http://127.0.0.1:{_closed_port()}/coco128.zip"
    proc = train("data=coco128", f"data.download_url={url}", env=client_env(
        MLFLOW_TRACKING_URI=tracking_server.uri, YOLOV5_MLFLOW_CACHE=str(tmp_path / "empty-cache")))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: data=coco128: cannot download {url}")
    assert "data=synthetic" in line and "data.root" in line
    assert set(tracking_server.run_ids()) == before


@pytest.fixture
def corrupt_dataset(tmp_path):
    """Real images whose every label line is garbage: YOLOv5 finds no usable labels and crashes."""
    root = generate(SyntheticSpec(train_images=8, val_images=4, image_size=64, seed=1), tmp_path / "datasets")
    for label in root.glob("labels/*/*.txt"):
        label.write_text("not a label\n")
    return root


def test_failing_training_ends_failed_with_log_uploaded(train, tracking_server, corrupt_dataset):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-failing")
    proc = train(*TINY, "train.epochs=1", f"data.root={corrupt_dataset}", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: training failed:" in proc.stderr
    client = tracking_server.client()
    [run] = client.search_runs([client.get_experiment_by_name("e2e-failing").experiment_id])
    assert run.info.status == "FAILED"
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/logs/train.log"
    log = tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()
    reported = proc.stderr.split("error: training failed: ")[1].split(" (traceback in ")[0]
    assert "Traceback (most recent call last)" in log and reported in log
    # Partial outputs too: YOLOv5 wrote its options before it failed.
    assert f"{run.info.experiment_id}/{run.info.run_id}/artifacts/training-output/opt.yaml" in \
        tracking_server.bucket_keys(f"{run.info.experiment_id}/{run.info.run_id}/")
