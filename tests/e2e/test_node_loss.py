"""Node loss: a training killed without a word (SIGKILL, no grace: a lost node, the OOM killer) is continued by the
retried pod from the checkpoint uploaded during training (train/tracking/checkpoints.py), to FINISHED, and the run
says how each attempt went. Also a run whose checkpoint already holds its last epoch finishes without training."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import torch

from tests.conftest import TINY, client_env, train_cli, why, training_metrics
from tests.e2e.test_preemption import artifact_text

PROBE = "metrics/mAP_0.5"


def launch(cwd: Path, cache_dir: Path, overrides: List[str], env: Dict[str, str]) -> subprocess.Popen:
    """`python -m train` in a session of its own (a pod: everything in it dies at once), its output in files."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "train", *overrides], cwd=cwd,
                            env={"YOLOV5_MLFLOW_CACHE": str(cache_dir), **env}, start_new_session=True,
                            stdout=open(cwd / "stdout.txt", "w"), stderr=open(cwd / "stderr.txt", "w"))


def said(cwd: Path) -> str:
    return (cwd / "stderr.txt").read_text()[-3000:]


def only_run_id(client, experiment: str, proc: subprocess.Popen, cwd: Path, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no run appeared: {said(cwd)}")


def results_epochs(tracking_server, run) -> List[int]:
    rows = list(csv.reader(io.StringIO(artifact_text(tracking_server, run, "training-output/results.csv"))))
    return [int(row[0]) for row in rows[1:]]


def test_a_node_lost_mid_training_is_continued_from_the_checkpoint_uploaded_during_training(tracking_server,
                                                                                            cache_dir, tmp_path):
    epochs, experiment = 6, "e2e-node-loss"
    command = [*TINY, f"train.epochs={epochs}", "mlflow.checkpoint_every_epochs=1", "mlflow.log_model=false"]
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    env.pop("POD_NAME", None)
    env.pop("NODE_NAME", None)
    client = tracking_server.client()

    first_pod = tmp_path / "pod-1"
    first = launch(first_pod, cache_dir, command, {**env, "HOSTNAME": "trainer-abcde"})
    run_id = only_run_id(client, experiment, first, first_pod)
    deadline = time.monotonic() + 300
    while True:  # two epochs of metrics on the server, and a checkpoint uploaded after the first epoch
        assert first.poll() is None, f"ended before it could be killed: {said(first_pod)}"
        assert time.monotonic() < deadline, f"no checkpoint uploaded: {said(first_pod)}"
        tags = client.get_run(run_id).data.tags
        if len(client.get_metric_history(run_id, PROBE)) >= 2 and int(tags.get("checkpoint_epoch", -1)) >= 1:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the node is gone: no SIGTERM, no grace, nothing runs after this
    first.wait(30)
    killed_at = len(client.get_metric_history(run_id, PROBE))

    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # nothing could say otherwise
    assert run.data.tags["attempt"] == "1" and run.data.tags["attempt.1.pod"] == "trainer-abcde"
    keys = tracking_server.bucket_keys(f"{run.info.experiment_id}/{run_id}/artifacts/training-output/weights/")
    assert any(k.endswith("/last.pt") for k in keys), keys
    assert killed_at < epochs

    # The retried pod: the same command, the same MLFLOW_RUN_ID, another node, an empty disk.
    (tmp_path / "pod-2").mkdir()
    retried = train_cli(tmp_path / "pod-2", cache_dir, command, timeout=600,
                        env={**env, "MLFLOW_RUN_ID": run_id, "POD_NAME": "trainer-fghij", "NODE_NAME": "node-b"})
    assert retried.returncode == 0, why(retried)

    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    resumed_at = int(tags["resumed_at_epoch"])
    assert 2 <= resumed_at <= killed_at  # from the checkpoint uploaded during training, at most an epoch behind
    assert tags["attempt"] == "2" and tags["attempt.2.pod"] == "trainer-fghij" and tags["attempt.2.node"] == "node-b"
    assert tags["attempt.1.ended"] == ("lost without a word (SIGKILL: node loss or out of memory); continued from "
                                       f"the checkpoint uploaded at epoch {resumed_at - 1}")
    assert int(tags["checkpoint_epoch"]) == epochs - 1  # the retry uploaded checkpoints too

    assert results_epochs(tracking_server, run) == list(range(epochs))  # each epoch exactly once
    log = artifact_text(tracking_server, run, "logs/train.log")
    assert log.count(f"MLflow run {run_id} in experiment") == 2  # both attempts, in one log
    assert log.count("Resuming training from") == 1
    for key in training_metrics(run):
        steps = Counter(m.step for m in client.get_metric_history(run_id, key))
        assert set(steps) == set(range(epochs)), key
        # An epoch appears twice only when the checkpoint was behind the metrics: trained again after the loss.
        assert all(resumed_at <= step < killed_at for step, n in steps.items() if n > 1), (key, steps)


def test_a_run_whose_checkpoint_holds_the_last_epoch_finishes_without_training_again(tracking_server, cache_dir,
                                                                                    tmp_path):
    """Killed during YOLOv5's final validation: before it stripped last.pt (the checkpoint at the last epoch) or
    after (epoch -1). YOLOv5 cannot resume either; the run finishes its record instead."""
    epochs, experiment = 2, "e2e-last-epoch"
    command = [*TINY, f"train.epochs={epochs}", "mlflow.log_model=false"]
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    client = tracking_server.client()
    for folder in ("first", "second", "third"):
        (tmp_path / folder).mkdir()
    done = train_cli(tmp_path / "first", cache_dir, command, env=env)
    assert done.returncode == 0, why(done)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    run_id = run.info.run_id
    history = {key: [m.step for m in client.get_metric_history(run_id, key)] for key in training_metrics(run)}

    # After the strip: the uploaded last.pt is a finished training's. The run left KILLED, as a SIGTERM would.
    client.set_terminated(run_id, "KILLED")
    resumed = train_cli(tmp_path / "second", cache_dir, [f"train.resume={run_id}"], env=env)
    assert resumed.returncode == 0, why(resumed)
    assert "nothing left to train" in resumed.stdout + resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"

    # Before the strip: last.pt holds the last epoch with its optimizer; the pod retried after it FAILED.
    last = Path(client.download_artifacts(run_id, "training-output/weights/last.pt", str(tmp_path)))
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    checkpoint["epoch"] = epochs - 1
    torch.save(checkpoint, last)
    client.log_artifact(run_id, str(last), "training-output/weights")
    client.set_tag(run_id, "error", "RuntimeError: killed in the final validation")
    client.set_terminated(run_id, "FAILED")
    retried = train_cli(tmp_path / "third", cache_dir, command, env={**env, "MLFLOW_RUN_ID": run_id})
    assert retried.returncode == 0, why(retried)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "3" and run.data.tags["resumed_at_epoch"] == str(epochs)
    assert run.data.tags["attempt.2.ended"] == ("FAILED: RuntimeError: killed in the final validation; continued "
                                                f"from its checkpoint at epoch {epochs - 1}")
    assert "KILLED: stopped by a signal" in run.data.tags["attempt.1.ended"]
    assert results_epochs(tracking_server, run) == list(range(epochs))
    assert {key: [m.step for m in client.get_metric_history(run_id, key)] for key in training_metrics(run)} == history
    final = Path(client.download_artifacts(run_id, "training-output/weights/last.pt", str(tmp_path / "final")))
    assert torch.load(final, map_location="cpu", weights_only=False)["epoch"] == -1  # as YOLOv5 leaves it
