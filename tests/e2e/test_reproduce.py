"""The run as the unit of reproducibility: its lineage, and `python -m train.reproduce` from its record alone."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, client_env, train_cli, why, training_metrics
from train.data.synthetic import SyntheticSpec, generate

EXPERIMENT = "e2e-reproduce"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset of our own, so a test can change it under the run's feet."""
    root = tmp_path_factory.mktemp("reproduce-data")
    return shutil.copytree(generate(SyntheticSpec(train_images=32, val_images=16, image_size=64, seed=4), root),
                           root / "copy")


@pytest.fixture(scope="module")
def original(tracking_server, cache_dir, dataset, tmp_path_factory):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=EXPERIMENT)
    proc = train_cli(tmp_path_factory.mktemp("original"), cache_dir,
                     [*TINY, "train.epochs=3", f"data.root={dataset}"], env=env)
    assert proc.returncode == 0, why(proc)
    client = tracking_server.client()
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return run


def reproduce(tracking_server, cache_dir, cwd, *args):
    cwd.mkdir(exist_ok=True)
    env = {"YOLOV5_MLFLOW_CACHE": str(cache_dir), **client_env(MLFLOW_TRACKING_URI=tracking_server.uri)}
    return subprocess.run([sys.executable, "-m", "train.reproduce", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_lineage_names_code_data_and_environment(original, tracking_server):
    client = tracking_server.client()
    tags = original.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == head
    assert tags["git.branch"] and tags["git.dirty"] in ("true", "false")
    artifacts = {a.path for folder in ("code", "environment") for a in client.list_artifacts(original.info.run_id,
                                                                                            folder)}
    assert ("code/git-diff.patch" in artifacts) == (tags["git.dirty"] == "true")
    assert {"environment/installed.txt", "environment/requirements.lock"} <= artifacts
    installed = client.download_artifacts(original.info.run_id, "environment/installed.txt")
    assert f"torch=={importlib.metadata.version('torch')}" in open(installed).read().splitlines()
    assert tags["env.torch"] == importlib.metadata.version("torch") and tags["env.yolov5"] == "7.0.14"
    assert tags["env.gpu"] == "none" and tags["env.cuda"]
    inputs = {i.tags[0].value: i.dataset for i in original.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    assert all(d.name == "synthetic" and re.fullmatch(r"[0-9a-f]{16}", d.digest) for d in inputs.values())
    assert inputs["training"].digest != inputs["validation"].digest


def test_reproduction_trains_a_new_run_with_identical_metrics(original, tracking_server, cache_dir, tmp_path):
    proc = reproduce(tracking_server, cache_dir, tmp_path / "work", original.info.run_id)
    assert proc.returncode == 0, why(proc)
    assert "identical at every epoch" in proc.stdout, proc.stdout[-3000:]
    client = tracking_server.client()
    [copy] = client.search_runs([original.info.experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert copy.info.status == "FINISHED" and copy.info.run_id != original.info.run_id
    assert copy.info.run_name == f"reproduce-{original.info.run_name}"
    assert {k: v for k, v in copy.data.params.items() if k not in ("mlflow.run_name", "reproduce.run_id")} == \
        {k: v for k, v in original.data.params.items() if k not in ("mlflow.run_name", "reproduce.run_id")}
    for key in training_metrics(original):
        before = [(m.step, m.value) for m in client.get_metric_history(original.info.run_id, key)]
        after = [(m.step, m.value) for m in client.get_metric_history(copy.info.run_id, key)]
        assert after == before, key


def test_changed_data_is_refused_unless_allowed(original, tracking_server, cache_dir, dataset, tmp_path):
    label = sorted((dataset / "labels" / "train").glob("*.txt"))[0]
    saved = label.read_text()
    label.write_text(saved + "0 0.5 0.5 0.1 0.1\n")
    try:
        proc = reproduce(tracking_server, cache_dir, tmp_path / "work", original.info.run_id)
    finally:
        label.write_text(saved)
    assert proc.returncode == 2, why(proc)
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: data: the training split's content digest is ")
    assert line.endswith("(python -m train.reproduce --allow-mismatch to train anyway)")


def test_other_code_is_refused(original, tracking_server, cache_dir, tmp_path):
    client = tracking_server.client()
    client.set_tag(original.info.run_id, "git.commit", "0" * 40)  # as if trained at another commit
    try:
        proc = reproduce(tracking_server, cache_dir, tmp_path / "work", original.info.run_id)
    finally:
        client.set_tag(original.info.run_id, "git.commit", original.data.tags["git.commit"])
    assert proc.returncode == 2, why(proc)
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: code: run {original.info.run_id} was trained at commit 000000000000")
