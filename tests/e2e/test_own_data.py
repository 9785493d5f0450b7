"""A team's own dataset in its S3 (moto standing in for MinIO): as a folder and as a zip, fetched once per machine
into the cache, recorded by its URI and content digest, reproduced from that record, and shared by parallel trials.

Downloads are counted in the S3 server's own access log (tests/conftest.py TeamS3), never in the recipe's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_BUCKET, TINY, client_env, train_cli, why, yolo_dataset, zipped

EXPERIMENT = "e2e-own-data"
ONE_EPOCH = [*TINY, "train.epochs=1"]


@pytest.fixture(scope="module")
def in_s3(team_s3, tmp_path_factory):
    """The dataset uploaded twice: as a folder (widgets/) and as a zip (widgets.zip); (folder URI, zip URI, files)."""
    root = yolo_dataset(tmp_path_factory.mktemp("own-data"))
    files = team_s3.upload_folder(root, "widgets")
    team_s3.client().upload_file(str(zipped(root, root.parent / "widgets.zip")), DATA_BUCKET, "widgets.zip")
    return f"s3://{DATA_BUCKET}/widgets/", f"s3://{DATA_BUCKET}/widgets.zip", files


def _runs(tracking_server, experiment: str):
    client = tracking_server.client()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])


def _dataset_inputs(run) -> dict:
    """context -> (name, source URI, digest) of a run's dataset inputs."""
    found = {}
    for item in run.inputs.dataset_inputs:
        context = next(t.value for t in item.tags if t.key == "mlflow.data.context")
        found[context] = (item.dataset.name, json.loads(item.dataset.source)["uri"], item.dataset.digest)
    return found


def test_a_dataset_in_s3_trains_from_a_folder_and_a_zip_and_downloads_once(tracking_server, team_s3, in_s3,
                                                                           tmp_path):
    folder_uri, zip_uri, files = in_s3
    cache = tmp_path / "cache"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=EXPERIMENT, **team_s3.env())

    for attempt in (1, 2):
        proc = train_cli(tmp_path, cache, [*ONE_EPOCH, "data=yolo", f"data.source={folder_uri}"], env=env)
        assert proc.returncode == 0, why(proc)
        # Every object once, on the first run only: the second found the copy in the cache.
        assert team_s3.object_downloads("widgets/") == files, attempt
    # In an experiment of its own: MLflow keeps one dataset per name and digest in an experiment, with the source
    # it was first logged with, and the zip holds the very same files.
    env["MLFLOW_EXPERIMENT_NAME"] = f"{EXPERIMENT}-zip"
    proc = train_cli(tmp_path, cache, [*ONE_EPOCH, "data=yolo", f"data.source={zip_uri}"], env=env)
    assert proc.returncode == 0, why(proc)
    assert team_s3.object_downloads("widgets.zip") == 1

    first, second = _runs(tracking_server, EXPERIMENT)
    [from_zip] = _runs(tracking_server, f"{EXPERIMENT}-zip")
    assert all(run.info.status == "FINISHED" for run in (first, second, from_zip))
    # The record names the source as given (never the cache) and its content: the same files give the same
    # digests whether they came as a folder or a zip.
    inputs = _dataset_inputs(first)
    assert set(inputs) == {"training", "validation"}
    assert {(name, uri) for name, uri, _ in inputs.values()} == {("widgets", folder_uri)}
    assert _dataset_inputs(second) == inputs
    assert {c: (n, u) for c, (n, u, _) in _dataset_inputs(from_zip).items()} == {
        "training": ("widgets", zip_uri), "validation": ("widgets", zip_uri)}
    assert {c: d for c, (_, _, d) in _dataset_inputs(from_zip).items()} == {c: d for c, (_, _, d) in inputs.items()}
    assert first.data.params["data.source"] == folder_uri and first.data.tags["dataset"] == "yolo"
    assert str(cache / "fetched") not in json.dumps(first.data.params) + json.dumps(first.data.tags)


def test_a_run_on_s3_data_is_reproduced_from_its_record_and_refused_when_the_data_changed(
        tracking_server, team_s3, tmp_path):
    root = yolo_dataset(tmp_path / "data", seed=12)
    team_s3.upload_folder(root, "gadgets")
    uri = f"s3://{DATA_BUCKET}/gadgets/"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=f"{EXPERIMENT}-reproduce",
                     **team_s3.env())
    proc = train_cli(tmp_path, tmp_path / "cache", [*ONE_EPOCH, "data=yolo", f"data.source={uri}"], env=env)
    assert proc.returncode == 0, why(proc)
    [original] = _runs(tracking_server, f"{EXPERIMENT}-reproduce")

    # Another machine (an empty cache) fetches it again by the recorded source, and trains.
    other = tmp_path / "other-machine"
    other.mkdir()
    reproduce = ["-m", "train.reproduce", original.info.run_id]
    proc = _python(other, reproduce, env)
    assert proc.returncode == 0, why(proc)
    copy = next(r for r in _runs(tracking_server, f"{EXPERIMENT}-reproduce") if r.data.tags.get("reproduces"))
    assert copy.info.status == "FINISHED" and _dataset_inputs(copy) == _dataset_inputs(original)

    # One label changed at the source: a new fetch, and the reproduction is refused in one line.
    label = next((root / "labels" / "train").glob("*.txt"))
    team_s3.client().put_object(Bucket=DATA_BUCKET, Key=f"gadgets/labels/train/{label.name}", Body=b"0 0.5 0.5 0.1 0.1\n")
    proc = _python(tmp_path / "third", reproduce, env)
    assert proc.returncode == 2, why(proc)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: data: the training split's content digest is "), why(proc)


def _python(cwd: Path, args, env):
    """`python <args>` in a working folder (and cache) of its own: another machine."""
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=cwd, env={"YOLOV5_MLFLOW_CACHE": str(cwd / "cache"), **env},
                          capture_output=True, text=True, timeout=900)


def test_parallel_trials_fetch_an_uncached_dataset_once(tracking_server, team_s3, tmp_path):
    root = yolo_dataset(tmp_path / "data", seed=13, train_images=16, val_images=8)
    files = team_s3.upload_folder(root, "sprockets")
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME=f"{EXPERIMENT}-parallel",
                     **team_s3.env())
    proc = train_cli(tmp_path, tmp_path / "cache", [
        "-m", *ONE_EPOCH, "data=yolo", f"data.source=s3://{DATA_BUCKET}/sprockets/", "hydra/launcher=parallel",
        "sweep.n_jobs=4", "hyp.lr0=0.001,0.002,0.003,0.004"], env=env)
    assert proc.returncode == 0, why(proc)
    trials = [r for r in _runs(tracking_server, f"{EXPERIMENT}-parallel") if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert team_s3.object_downloads("sprockets/") == files  # four trials at once, one download of each object
