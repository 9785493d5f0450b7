"""Preemption and resume: SIGTERM/SIGINT end the run KILLED with its checkpoint, and the run continues from it."""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.conftest import REPO, TINY, client_env, training_metrics

GRACE_PERIOD_S = yaml.safe_load((REPO / "kubernetes_job_template.yaml").read_text())[
    "spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
PROBE = "metrics/mAP_0.5"


def launch(cwd: Path, cache_dir: Path, overrides: List[str], env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", *overrides], cwd=cwd,
                            env={"YOLOV5_MLFLOW_CACHE": str(cache_dir), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run_id(client, experiment: str, proc: subprocess.Popen, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no run appeared: {proc.communicate()[1][-3000:]}")


def wait_for_steps(client, run_id: str, count: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until the server holds `count` epochs of metrics: training is under way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if len(client.get_metric_history(run_id, PROBE)) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} epochs recorded: {proc.communicate()[1][-3000:]}")


def interrupt(proc: subprocess.Popen, signum: int) -> tuple:
    """Send `signum`; (seconds until the process exited, stderr)."""
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=GRACE_PERIOD_S)
    return time.monotonic() - sent, stderr


def artifact_text(tracking_server, run, path: str) -> str:
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/{path}"
    return tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_interrupt_ends_the_run_killed_with_log_and_checkpoint(signum, tracking_server, cache_dir, tmp_path):
    experiment = f"e2e-interrupted-{signum.name}"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    proc = launch(tmp_path, cache_dir, [*TINY, "train.epochs=50"], env)
    client = tracking_server.client()
    run_id = only_run_id(client, experiment, proc)
    wait_for_steps(client, run_id, 1, proc)
    seconds, stderr = interrupt(proc, signum)
    assert proc.returncode == 130, stderr[-2000:]
    assert seconds < GRACE_PERIOD_S  # else Kubernetes SIGKILLs the pod before the run is recorded
    assert f"train.resume={run_id}" in stderr.strip().splitlines()[-1]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "KeyboardInterrupt" in artifact_text(tracking_server, run, "logs/train.log")
    keys = tracking_server.bucket_keys(f"{run.info.experiment_id}/{run_id}/artifacts/training-output/weights/")
    assert any(k.endswith("/last.pt") for k in keys)


def test_resumed_run_continues_one_metric_history_to_the_planned_epoch(tracking_server, cache_dir, tmp_path):
    """Killed (SIGTERM), resumed by `train.resume` and killed again (Ctrl-C), then continued the way a retried
    Kubernetes Job does it: the same command with the same MLFLOW_RUN_ID. One run, every epoch once."""
    epochs, experiment = 10, "e2e-resume"
    command = [*TINY, f"train.epochs={epochs}"]
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    client = tracking_server.client()

    first = launch(tmp_path, cache_dir, command, env)
    run_id = only_run_id(client, experiment, first)
    wait_for_steps(client, run_id, 2, first)
    assert interrupt(first, signal.SIGTERM)[0] < GRACE_PERIOD_S and first.returncode == 130
    killed_at = len(client.get_metric_history(run_id, PROBE))

    second = launch(tmp_path, cache_dir, [f"train.resume={run_id}"], env)
    wait_for_steps(client, run_id, killed_at + 2, second)
    assert interrupt(second, signal.SIGINT)[0] < GRACE_PERIOD_S and second.returncode == 130
    assert client.get_run(run_id).info.status == "KILLED"

    retried = subprocess.run([sys.executable, "-m", "train", *command], cwd=tmp_path, capture_output=True, text=True,
                             env={"YOLOV5_MLFLOW_CACHE": str(cache_dir), **env, "MLFLOW_RUN_ID": run_id}, timeout=600)
    assert retried.returncode == 0, retried.stderr[-3000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in training_metrics(run):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(epochs)), key
    rows = list(csv.reader(io.StringIO(artifact_text(tracking_server, run, "training-output/results.csv"))))
    assert [int(row[0]) for row in rows[1:]] == list(range(epochs))
    log = artifact_text(tracking_server, run, "logs/train.log")
    assert log.count("Resuming training from") == 2 and log.count("KeyboardInterrupt: SIG") == 2
    assert int(run.data.tags["resumed_at_epoch"]) > killed_at
    assert run.data.params["train.epochs"] == str(epochs)


def test_interrupted_before_the_first_checkpoint_says_there_is_nothing_to_resume(tracking_server, cache_dir,
                                                                                  tmp_path):
    experiment = "e2e-interrupted-early"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    proc = launch(tmp_path, cache_dir, [*TINY, "train.epochs=50"], env)
    client = tracking_server.client()
    run_id = only_run_id(client, experiment, proc)  # the run exists; its first epoch has not ended
    _, stderr = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 130, stderr[:2000] + "\n...\n" + stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "before its first checkpoint" in last and "train.resume" not in last  # only what is true
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = subprocess.run([sys.executable, "-m", "train", f"train.resume={run_id}"], cwd=tmp_path,
                             env={"YOLOV5_MLFLOW_CACHE": str(cache_dir), **env}, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 2 and "has no checkpoint" in resumed.stderr.strip().splitlines()[-1]
