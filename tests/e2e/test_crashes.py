"""A crash once the run exists ends it FAILED, with the traceback in logs/train.log and the partial outputs."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, client_env
from train.data.synthetic import SyntheticSpec, generate

# Enough address space for Python, torch and MLflow (about 3.3 GB after `import torch`), not for yolov5l's
# activations at 640 px: allocations fail inside PyTorch as they do on a full GPU or a small pod.
ADDRESS_SPACE_LIMIT = 8 * 1024**3


def assert_failed_with_traceback_and_outputs(tracking_server, experiment: str, stderr: str) -> tuple:
    """(the error line on stderr, the uploaded train.log)"""
    client = tracking_server.client()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    prefix = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/"
    log = tracking_server.s3().get_object(Bucket="mlflow", Key=f"{prefix}logs/train.log")["Body"].read().decode()
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("error: training failed: ")]
    reported = line.split("error: training failed: ")[1].split(" (traceback in ")[0]
    assert "Traceback (most recent call last)" in log and reported.split(" (out of memory")[0] in log
    assert run.data.tags["error"].split(":")[0] == reported.split(":")[0]  # the exception type
    assert f"{prefix}training-output/opt.yaml" in tracking_server.bucket_keys(prefix)  # partial outputs
    return line, log


@pytest.fixture
def corrupt_dataset(tmp_path):
    """Good labels, but image files no decoder reads (a sync cut short): the checks before the run read labels, not
    pixels, so YOLOv5 finds no usable image while loading data, once the run exists. (Garbage labels are refused
    before the run: tests/e2e/test_refusals.py.)"""
    root = generate(SyntheticSpec(train_images=8, val_images=4, image_size=64, seed=1), tmp_path / "datasets")
    for image in root.glob("images/*/*.jpg"):
        image.write_bytes(b"not an image\n")
    return root


def test_crash_in_data_loading(train, tracking_server, corrupt_dataset):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-crash-data")
    proc = train(*TINY, "train.epochs=1", f"data.root={corrupt_dataset}", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    _, log = assert_failed_with_traceback_and_outputs(tracking_server, "e2e-crash-data", proc.stderr)
    assert "yolov5/utils/dataloaders.py" in log.split("Traceback (most recent call last)")[-1]


def test_crash_in_a_callback(train, tracking_server, tmp_path):
    """YOLOv5's own epoch-end logger cannot append to results.csv (a folder stands in its place)."""
    run_dir = tmp_path / "run"
    (run_dir / "yolov5" / "results.csv").mkdir(parents=True)
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-crash-callback")
    proc = train(*TINY, "train.epochs=2", f"hydra.run.dir={run_dir}", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line, log = assert_failed_with_traceback_and_outputs(tracking_server, "e2e-crash-callback", proc.stderr)
    assert "IsADirectoryError" in line and "on_fit_epoch_end" in log


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def test_out_of_memory(tracking_server, cache_dir, tmp_path):
    env = {"YOLOV5_MLFLOW_CACHE": str(cache_dir),
           **client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-crash-oom")}
    proc = subprocess.run([sys.executable, "-m", "train", *TINY, "train.epochs=1", "model=yolov5l",
                           "train.imgsz=640", "train.batch=32"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=_limit_address_space)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line, _ = assert_failed_with_traceback_and_outputs(tracking_server, "e2e-crash-oom", proc.stderr)
    # PyTorch's allocator or oneDNN's kernel set-up, whichever asks for the memory first.
    assert "can't allocate memory" in line or "could not create a primitive" in line
    assert "out of memory: lower train.batch or train.imgsz" in line
