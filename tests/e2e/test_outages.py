"""The tracking server going away mid-training: for 30 s, and for good."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, ManagedTrackingServer, client_env, training_metrics
from tests.e2e.test_preemption import PROBE, launch, only_run_id, wait_for_steps

OUTAGE_S = 30


@pytest.fixture
def server(tmp_path, s3_endpoint):
    managed = ManagedTrackingServer(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", s3_endpoint)
    managed.start()
    yield managed
    managed.stop()


def epochs_done(workdir: Path) -> int:
    """Rows in the training's own results.csv: what it has trained, whatever the server knows."""
    found = list(workdir.glob("outputs/*/*/yolov5/results.csv"))
    return len(list(csv.reader(found[0].open()))) - 1 if found else 0


def assert_every_epoch_once(client, run_id: str, epochs: int) -> None:
    run = client.get_run(run_id)
    assert PROBE in run.data.metrics
    for key in training_metrics(run):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(epochs)), key


def test_a_30_s_outage_loses_nothing_and_stalls_nothing(server, cache_dir, tmp_path):
    epochs, experiment = 40, "e2e-outage"
    work = tmp_path / "work"
    work.mkdir()
    proc = launch(work, cache_dir, [*TINY, f"train.epochs={epochs}"],
                  client_env(MLFLOW_TRACKING_URI=server.tracking.uri, MLFLOW_EXPERIMENT_NAME=experiment))
    client = server.tracking.client()
    run_id = only_run_id(client, experiment, proc)
    wait_for_steps(client, run_id, 2, proc)

    server.stop()
    trained_before = epochs_done(work)
    time.sleep(OUTAGE_S)
    trained_during = epochs_done(work) - trained_before
    server.start()

    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert trained_during >= 2, "training stalled while the server was down"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_every_epoch_once(client, run_id, epochs)


def test_a_server_that_never_returns_leaves_the_record_local_until_synced(server, cache_dir, tmp_path):
    epochs, experiment = 6, "e2e-server-gone"
    work = tmp_path / "work"
    work.mkdir()
    proc = launch(work, cache_dir, [*TINY, f"train.epochs={epochs}", "mlflow.delivery_timeout_s=5"],
                  client_env(MLFLOW_TRACKING_URI=server.tracking.uri, MLFLOW_EXPERIMENT_NAME=experiment))
    client = server.tracking.client()
    run_id = only_run_id(client, experiment, proc)
    wait_for_steps(client, run_id, 1, proc)

    server.stop()
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 3, stderr[-3000:]
    assert epochs_done(work) == epochs  # training completed regardless
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert "did not take the whole record" in line and "python -m train.tracking.sync" in line
    [pending] = list(work.glob("outputs/*/*/tracking-pending.json"))
    record = json.loads(pending.read_text())
    assert record["run_id"] == run_id and record["status"] == "FINISHED" and record["epochs"]

    server.start()
    assert client.get_run(run_id).info.status == "RUNNING"  # not claimed FINISHED with holes in it
    synced = subprocess.run([sys.executable, "-m", "train.tracking.sync", str(pending.parent)], cwd=work,
                            env=client_env(), capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_every_epoch_once(client, run_id, epochs)
    assert not pending.exists()
    artifacts = {f.path for f in client.list_artifacts(run_id, "logs")}
    assert "logs/train.log" in artifacts
