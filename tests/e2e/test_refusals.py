"""Bad input, row by row as the README's "Bad input" table lists it.

Each row: one clear line on stderr, a non-zero exit, no run left RUNNING, and nothing written to
the run MLFLOW_RUN_ID names (as `mlflow run` sets it: the run exists before our code starts).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

from tests.conftest import REPO, TINY, ManagedTrackingServer, client_env, free_port, why
from train.data.synthetic import SyntheticSpec, generate

BAD_INPUT = 2
TRACKING_UNAVAILABLE = 3


@dataclass(frozen=True)
class Row:
    shown: str            # the README table's first column
    args: Tuple[str, ...]  # after `python -m`; {placeholders} come from the `places` fixture
    error: str            # how the one line on stderr starts
    exit_code: int = BAD_INPUT
    env: Tuple[Tuple[str, str], ...] = ()
    on_main_server: bool = True  # tracks to the session's server, under MLFLOW_RUN_ID=<a bystander run>


def train(*args: str) -> Tuple[str, ...]:
    return ("train", *args)


def mlproject(**params: str) -> Tuple[str, ...]:
    """What `mlflow run . -P k=v` runs in the container, from MLproject's own command template."""
    from train.tracking.mlflow_internals import load_project
    import shlex

    argv = shlex.split(load_project(str(REPO)).get_entry_point("main").compute_command(params, storage_dir="/tmp"))
    return tuple(argv[2:])  # after `python -m`


ROWS = [
    Row("train.epochs=abc", train("train.epochs=abc"), "error: train.epochs: Value 'abc' of type 'str'"),
    Row("train.epochs=-1", train("train.epochs=-1"), "error: train.epochs: must be >= 1"),
    Row("train.imgsz=100", train("train.imgsz=100"), "error: train.imgsz: must be a positive multiple of 32"),
    Row("train.batch=0", train("train.batch=0"), "error: train.batch: must be >= 1"),
    Row("train.device=gpu", train("train.device=gpu"), "error: train.device: must be ''"),
    Row("hyp.mosaic=2", train("hyp.mosaic=2"), "error: hyp.mosaic: is a probability"),
    Row("model=nope", train("model=nope"), "error: model: no option 'nope'"),
    Row("train.nope=1", train("train.nope=1"), "error: train.nope: Key 'nope' not in 'TrainConfig'"),
    Row("mlflow.experiment_name=''", train("mlflow.experiment_name=''"), "error: mlflow.experiment_name: must not"),
    Row("-P epochs=abc", mlproject(epochs="abc"), "error: train.epochs: Value 'abc'"),
    Row("-P foo=bar", mlproject(foo="bar"), "error: MLproject parameters: unrecognized arguments: --foo bar"),
    Row("-P overrides=train.batch=8", mlproject(overrides="train.batch=8"),
        "error: MLproject parameters: overrides sets train.batch, which has its own parameter"),
    Row("model.weights=yolov5s.pt", train("model.weights=yolov5s.pt"),
        "error: model.weights: must be '' (train from scratch) or an absolute path"),
    Row("model.weights=/nonexistent/best.pt", train("model.weights=/nonexistent/best.pt"),
        "error: model.weights: no such file"),
    Row("model.weights=<a file that is not a checkpoint>", train("model.weights={not_a_checkpoint}"),
        "error: model.weights: not a PyTorch checkpoint"),
    Row("data.root=/nonexistent", train("data.root=/nonexistent"), "error: data.root: no such folder"),
    Row("data.root=<a folder without images>", train("data.root={no_images}"), "error: data.root: "),
    Row("data.root=<images without labels>", train("data.root={no_labels}"), "error: data.root: no labels for"),
    Row("data=coco128 (offline, not downloaded yet)", train("data=coco128", "data.download_url={closed_url}"),
        "error: data=coco128: cannot download", env=(("YOLOV5_MLFLOW_CACHE", "{empty_cache}"),)),
    Row("mlflow.tracking_uri=htp://typo:5000", train("mlflow.tracking_uri=htp://typo:5000"),
        "error: mlflow.tracking_uri: unsupported scheme 'htp'"),
    Row("mlflow.tracking_uri=<nothing listening>", train("mlflow.tracking_uri={closed_url}",
                                                         "mlflow.startup_timeout_s=3"),
        "error: mlflow.tracking_uri: cannot use", TRACKING_UNAVAILABLE, on_main_server=False),
    Row("mlflow.tracking_uri=<a server that never answers>", train("mlflow.tracking_uri={silent_url}",
                                                                   "mlflow.startup_timeout_s=3"),
        "error: mlflow.tracking_uri: cannot use", TRACKING_UNAVAILABLE, on_main_server=False),
    Row("S3 endpoint unreachable (the server's MLFLOW_S3_ENDPOINT_URL)",
        train(*TINY, "mlflow.tracking_uri={bad_s3_server}", "mlflow.startup_timeout_s=5"),
        "error: artifact store: cannot write the run's artifacts", TRACKING_UNAVAILABLE, on_main_server=False),
    Row("train.resume=abc", train("train.resume=abc"), "error: train.resume: must be an MLflow run id"),
    Row("train.resume=<no such run>", train("train.resume=0123456789abcdef0123456789abcdef"),
        "error: train.resume: no run 0123456789abcdef0123456789abcdef"),
    Row("train.resume=<a FINISHED run>", train("train.resume={finished_run}"),
        "error: train.resume: run {finished_run} already ended FINISHED"),
    Row("MLFLOW_RUN_ID=<a FINISHED run>", train(*TINY), "error: MLFLOW_RUN_ID: run {finished_run} already ended",
        env=(("MLFLOW_RUN_ID", "{finished_run}"),)),
    Row("hydra/launcher=kubernetes with a Job template without containers",
        train("-m", "hydra/launcher=kubernetes", "hydra.launcher.backend_config={bad_backend_config}",
              "hyp.lr0=0.01,0.02"),
        "error: kube-job-template-path: "),
    Row("python -m train.k8s_job_template <a template that is not a Job>",
        ("train.k8s_job_template", "{bad_backend_config}"), "error: kube-job-template-path: "),
]


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def silent_url() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung server, a black-holing proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def bad_s3_server(tmp_path_factory) -> Iterator[ManagedTrackingServer]:
    """A tracking server that proxies artifacts to an S3 endpoint where nothing listens."""
    workdir = tmp_path_factory.mktemp("bad-s3")
    server = ManagedTrackingServer(workdir, f"sqlite:///{workdir / 'mlflow.db'}", _closed_url())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def finished_run(tracking_server) -> str:
    client = tracking_server.client()
    experiment = client.get_experiment_by_name("e2e-refusals") or client.get_experiment(
        client.create_experiment("e2e-refusals"))
    run = client.create_run(experiment.experiment_id, run_name="finished-bystander")
    client.log_param(run.info.run_id, "train.epochs", "3")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def places(tmp_path_factory, silent_url, bad_s3_server, finished_run) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("bad-inputs")
    not_a_checkpoint = root / "best.pt"
    not_a_checkpoint.write_text("<html>404 Not Found</html>\n")  # what a failed download leaves behind
    no_images = root / "no-images"
    for split in ("train", "val"):
        (no_images / "images" / split).mkdir(parents=True)
    no_labels = generate(SyntheticSpec(train_images=4, val_images=2, image_size=64, seed=3), root / "datasets")
    shutil.rmtree(no_labels / "labels")
    template = root / "job.yaml"
    template.write_text("apiVersion: batch/v1\nkind: Job\nmetadata: {namespace: kubeflow}\n"
                        "spec: {template: {spec: {restartPolicy: Never}}}\n")
    bad_backend_config = root / "k8s_backend_config.json"
    bad_backend_config.write_text(json.dumps({"kube-context": "none", "repository-uri": "registry.invalid/x",
                                              "kube-job-template-path": str(template)}))
    return {"not_a_checkpoint": str(not_a_checkpoint), "no_images": str(no_images), "no_labels": str(no_labels),
            "closed_url": _closed_url(), "silent_url": silent_url, "empty_cache": str(root / "empty-cache"),
            "bad_s3_server": bad_s3_server.tracking.uri, "finished_run": finished_run,
            "bad_backend_config": str(bad_backend_config)}


@pytest.fixture
def bystander(tracking_server) -> str:
    """A RUNNING run with a param and a tag, as `mlflow run` leaves it before our code starts."""
    client = tracking_server.client()
    experiment = client.get_experiment_by_name("e2e-refusals") or client.get_experiment(
        client.create_experiment("e2e-refusals"))
    run = client.create_run(experiment.experiment_id, run_name="bystander", tags={"owner": "test"})
    client.log_param(run.info.run_id, "epochs", "3")
    return run.info.run_id


def _record(server, run_id: str) -> tuple:
    client = server.client()
    run = client.get_run(run_id)
    return (run.info.status, run.data.params, run.data.tags, run.data.metrics,
            [a.path for a in client.list_artifacts(run_id)])


def _running(server) -> set:
    client = server.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(experiments, "attributes.status = 'RUNNING'")}


@pytest.mark.parametrize("row", ROWS, ids=[r.shown for r in ROWS])
def test_bad_input(row, places, tracking_server, bad_s3_server, bystander, cache_dir, tmp_path):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, YOLOV5_MLFLOW_CACHE=str(cache_dir))
    if row.on_main_server:
        env["MLFLOW_RUN_ID"] = bystander
    env.update({name: value.format(**places) for name, value in row.env})
    before = _record(tracking_server, bystander)
    running_before = _running(tracking_server)

    proc = subprocess.run([sys.executable, "-m", *(a.format(**places) for a in row.args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)

    assert proc.returncode == row.exit_code, why(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], why(proc)
    assert errors[0].startswith(row.error.format(**places)), errors[0]
    assert "Traceback" not in proc.stderr
    assert _record(tracking_server, bystander) == before  # nothing written to the existing run
    assert _running(tracking_server) == running_before
    assert not _running(bad_s3_server.tracking)


def test_an_unreachable_artifact_store_leaves_a_failed_run_that_says_why(places, bad_s3_server, tmp_path, cache_dir):
    env = client_env(YOLOV5_MLFLOW_CACHE=str(cache_dir), MLFLOW_EXPERIMENT_NAME="e2e-bad-s3")
    proc = subprocess.run([sys.executable, "-m", "train", *TINY, f"mlflow.tracking_uri={bad_s3_server.tracking.uri}",
                           "mlflow.startup_timeout_s=5"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == TRACKING_UNAVAILABLE, why(proc)
    client = bad_s3_server.tracking.client()
    [run] = client.search_runs([client.get_experiment_by_name("e2e-bad-s3").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TrackingUnavailable: artifact store: cannot write")


def test_readme_lists_every_row_and_only_those():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Bad input", 1)[1].split("\n#", 1)[0]
    shown = re.findall(r"^\| `(.+?)` \|", section, flags=re.MULTILINE)
    assert shown == [row.shown for row in ROWS]
