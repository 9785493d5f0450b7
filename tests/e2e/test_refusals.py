"""Bad input, row by row as docs/failures.md's "Bad input" table lists it.

Each row: one clear line on stderr, a non-zero exit, and nothing created: the same experiments and the same runs
(any status) on the tracking server before and after. The run MLFLOW_RUN_ID names (as `mlflow run` sets it: the run
exists before our code starts) ends FAILED with the line as its `error` tag, and nothing else is written to it. A row that waits for an unreachable server is also
timed against its startup budget (mlflow.startup_timeout_s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest
import yaml

from tests.conftest import (BIN, REPO, TINY, ManagedTrackingServer, client_env, free_port, start, stop,
                            wait_until_up, why, yolo_dataset)
from train.data.synthetic import SyntheticSpec, generate

BAD_INPUT = 2
TRACKING_UNAVAILABLE = 3
DEFAULT_STARTUP_TIMEOUT_S = float(yaml.safe_load((REPO / "conf" / "mlflow" / "default.yaml").read_text())
                                  ["startup_timeout_s"])
# What a refusal that waits for a server may take beyond its budget (mlflow.startup_timeout_s): starting Python and
# importing Hydra, MLflow and (for the rows that get as far as creating a run) torch and YOLOv5 take 5-15 s on a
# busy 2-core CI machine, plus composing the config and exiting. Generous on purpose: what this catches is a
# regression to MLflow's own retries, about 4 minutes, not a few seconds.
STARTUP_ALLOWANCE_S = 25.0


@dataclass(frozen=True)
class Row:
    shown: str            # the README table's first column
    args: Tuple[str, ...]  # after `python -m`; {placeholders} come from the `places` fixture
    error: str            # how the one line on stderr starts
    exit_code: int = BAD_INPUT
    env: Tuple[Tuple[str, str], ...] = ()
    on_main_server: bool = True  # tracks to the session's server, under MLFLOW_RUN_ID=<a bystander run>
    whole: bool = False   # the line is `error` exactly, not only how it starts
    # The one row that legitimately creates something: the run exists before its artifact store is tried, and
    # is left FAILED (with the experiment it needed) on the server whose artifact store is unreachable.
    creates_failed_run: bool = False

    @property
    def budget_s(self) -> Optional[float]:
        """The startup budget a row that waits for a server gives it on its command line."""
        return next((float(a.split("=", 1)[1]) for a in self.args if a.startswith("mlflow.startup_timeout_s=")), None)


def train(*args: str) -> Tuple[str, ...]:
    return ("train", *args)


def mlproject(**params: str) -> Tuple[str, ...]:
    """What `mlflow run . -P k=v` runs in the container, from MLproject's own command template."""
    from train.tracking.mlflow_internals import load_project
    import shlex

    argv = shlex.split(load_project(str(REPO)).get_entry_point("main").compute_command(params, storage_dir="/tmp"))
    return tuple(argv[2:])  # after `python -m`


S3_ENV_TEAM = (("MLFLOW_S3_ENDPOINT_URL", "{team_s3}"), ("AWS_ACCESS_KEY_ID", "testing-key"),
             ("AWS_SECRET_ACCESS_KEY", "testing-secret"), ("AWS_DEFAULT_REGION", "us-east-1"))
S3_ENV_DENYING = (("MLFLOW_S3_ENDPOINT_URL", "{denying_s3}"), ("AWS_ACCESS_KEY_ID", "testing-key"),
             ("AWS_SECRET_ACCESS_KEY", "testing-secret"), ("AWS_DEFAULT_REGION", "us-east-1"))

ROWS = [
    Row("train.epochs=abc", train("train.epochs=abc"), "error: train.epochs: Value 'abc' of type 'str'"),
    Row("train.epochs=-1", train("train.epochs=-1"), "error: train.epochs: must be >= 1"),
    Row("train.imgsz=100", train("train.imgsz=100"), "error: train.imgsz: must be a positive multiple of 32"),
    Row("train.batch=0", train("train.batch=0"), "error: train.batch: must be >= 1"),
    Row("train.device=gpu", train("train.device=gpu"), "error: train.device: must be ''"),
    Row("hyp.mosaic=2", train("hyp.mosaic=2"), "error: hyp.mosaic: is a probability"),
    Row("model=nope", train("model=nope"), "error: model: no option 'nope'"),
    Row("train.nope=1", train("train.nope=1"), "error: train.nope: no such key", whole=True),  # no close match
    Row("mlflow.tags.owner=alice", train("mlflow.tags.owner=alice"),
        "error: mlflow.tags.owner: no such key; to add it, use +mlflow.tags.owner=alice"),
    Row("hyp.lr0=0.01,0.001", train("hyp.lr0=0.01,0.001"),
        "error: hyp.lr0=0.01,0.001: several values: add --multirun (-m) to sweep over them"),
    Row("train.epoch=5", train("train.epoch=5"), "error: train.epoch: no such key (did you mean train.epochs?)"),
    Row("train.device=0", train("train.device=0"),
        "error: train.device: '0' asks for CUDA device 0, but this machine has no CUDA GPU",
        env=(("CUDA_VISIBLE_DEVICES", ""),)),  # as a machine without GPUs sees it, whatever this one has
    # Without CUDA the first device missing is 0 (the row above says so); with GPUs it is 99.
    Row("train.device='0,99'", train("train.device='0,99'"),
        "error: train.device: '0,99' asks for CUDA device {first_missing_of_0_99}, but this machine has"),
    Row("mlflow.experiment_name=''", train("mlflow.experiment_name=''"), "error: mlflow.experiment_name: must not"),
    Row("mlflow.checkpoint_every_epochs=-1", train("mlflow.checkpoint_every_epochs=-1"),
        "error: mlflow.checkpoint_every_epochs: must be >= 0 (0: off), got -1", whole=True),
    Row("-P epochs=abc", mlproject(epochs="abc"), "error: train.epochs: Value 'abc'"),
    Row("-P foo=bar", mlproject(foo="bar"), "error: MLproject parameters: unrecognized arguments: --foo bar"),
    Row("-P overrides=train.batch=8", mlproject(overrides="train.batch=8"),
        "error: MLproject parameters: overrides sets train.batch, which has its own parameter"),
    Row("model.weights=yolov5s.pt (offline, not downloaded yet)",
        train("model.weights=yolov5s.pt", "fetch.release_url={closed_url}/v7.0"),
        "error: model.weights: {closed_url}/v7.0/yolov5s.pt: cannot download it (",
        env=(("YOLOV5_MLFLOW_CACHE", "{empty_cache}"),)),
    Row("model.weights=/nonexistent/best.pt", train("model.weights=/nonexistent/best.pt"),
        "error: model.weights: no such file or folder: /nonexistent/best.pt", whole=True),
    Row("model.weights=<a file that is not a checkpoint>", train("model.weights={not_a_checkpoint}"),
        "error: model.weights: not a PyTorch checkpoint"),
    Row("model.weights=gs://bucket/best.pt", train("model.weights=gs://bucket/best.pt"),
        "error: model.weights: unsupported scheme 'gs'"),
    Row("model.weights=<a yolov5n checkpoint> model=yolov5s", train("model.weights={yolov5n_checkpoint}",
                                                                    "model=yolov5s"),
        "error: model.weights: its layers do not fit model.cfg=yolov5s.yaml (only "),
    Row("model.weights=models:/<no such model>@champion", train("model.weights=models:/no-such-model@champion"),
        "error: model.weights: models:/no-such-model@champion: cannot read it from http://"),
    Row("data=yolo (no data.source)", train("data=yolo"), "error: data.source: data=yolo needs it"),
    Row("data.source=/nonexistent/data.yaml", train("data=yolo", "data.source=/nonexistent/data.yaml"),
        "error: data.source: no such file or folder: /nonexistent/data.yaml", whole=True),
    Row("data.source=s3://<no such bucket>/sets/", train("data=yolo", "data.source=s3://no-such-bucket/sets/"),
        "error: data.source: s3://no-such-bucket/sets/: no bucket 'no-such-bucket' at http://",
        env=S3_ENV_TEAM),
    Row("data.source=s3://... (access denied)", train("data=yolo", "data.source=s3://datasets/sets/"),
        "error: data.source: s3://datasets/sets/: access denied at http://", env=S3_ENV_DENYING),
    Row("data.source=http://<nothing listening>/data.zip", train("data=yolo", "data.source={closed_url}/data.zip"),
        "error: data.source: {closed_url}/data.zip: cannot download it ("),
    Row("data.source=runs:/<no such run>/data", train("data=yolo",
                                                      "data.source=runs:/0123456789abcdef0123456789abcdef/data"),
        "error: data.source: runs:/0123456789abcdef0123456789abcdef/data: no run 0123456789abcdef0123456789abcdef at "),
    Row("data.source=<a corrupt zip>", train("data=yolo", "data.source={corrupt_zip}"),
        "error: data.source: not a readable zip archive ("),
    Row("data.source=<a yaml without names>", train("data=yolo", "data.source={no_names}"),
        "error: data.source: the dataset yaml has no names (a list or a map of class names) and no nc", whole=True),
    Row("data.source=<nc: 5 with 3 names>", train("data=yolo", "data.source={nc_mismatch}"),
        "error: data.source: nc is 5, but names lists 3 classes", whole=True),
    Row("data.source=<a split without images>", train("data=yolo", "data.source={empty_split}"),
        "error: data.source: the val split (images/val) holds no images ("),
    Row("data.source=<a malformed label line>", train("data=yolo", "data.source={malformed_label}"),
        "error: data.source: labels/train/train_00000.txt line 1: expected 'class x_center y_center width height'"),
    Row("data.source=<a label of class 7 with 3 classes>", train("data=yolo", "data.source={class_out_of_range}"),
        "error: data.source: labels/train/train_00000.txt line 1: class 7, but the dataset has 3 classes (0-2): "),
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
        "error: artifact store: cannot write the run's artifacts", TRACKING_UNAVAILABLE, on_main_server=False,
        creates_failed_run=True),
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
    Row("python -m train.reproduce", ("train.reproduce",),
        "error: python -m train.reproduce: the following arguments are required: run_id"),
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
def denying_s3(tmp_path_factory) -> Iterator[str]:
    """An S3 server that checks every request's credentials (moto's IAM enforcement, no user known): access denied."""
    workdir = tmp_path_factory.mktemp("denying-s3")
    port = free_port()
    server = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, workdir / "moto.log")
    try:
        wait_until_up(f"http://127.0.0.1:{port}/moto-api/", server, workdir / "moto.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def _own_datasets(root: Path) -> Dict[str, str]:
    """A user's dataset, and each way it can be wrong."""
    base = yolo_dataset(root / "base")

    def variant(name: str, change) -> str:
        copy = root / name
        shutil.copytree(base, copy)
        change(copy)
        return str(copy)

    def data_yaml(**edits):
        def change(copy: Path) -> None:
            spec = {**yaml.safe_load((copy / "data.yaml").read_text()), **edits}
            (copy / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
        return change

    def first_label(text: str):
        return lambda copy: (copy / "labels" / "train" / "train_00000.txt").write_text(text)

    corrupt = root / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a download cut short
    return {
        "corrupt_zip": str(corrupt),
        "no_names": variant("no-names", data_yaml(names=None)),
        "nc_mismatch": variant("nc-mismatch", data_yaml(nc=5)),
        "empty_split": variant("empty-split", lambda copy: [p.unlink() for p in (copy / "images" / "val").iterdir()]),
        "malformed_label": variant("malformed", first_label("0 0.5 0.5 0.2\n")),
        "class_out_of_range": variant("class-7", first_label("7 0.5 0.5 0.2 0.2\n")),
    }


def _yolov5n_checkpoint(path: Path) -> str:
    """A YOLOv5n checkpoint as YOLOv5 saves one, made in a process of its own (importing yolov5 sets globals)."""
    code = ("import sys, torch; from train import offline; from pathlib import Path; "
            "offline.apply(Path(sys.argv[2])); from yolov5.models.yolo import Model; "
            "from train.yolo import model_yaml; "
            "torch.save({'model': Model(str(model_yaml('yolov5n.yaml')), nc=3).half()}, sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path), str(path.parent / "cache")], env=client_env(), check=True,
                   capture_output=True)
    return str(path)


@pytest.fixture(scope="module")
def places(tmp_path_factory, silent_url, bad_s3_server, finished_run, team_s3, denying_s3) -> Dict[str, str]:
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
            "bad_backend_config": str(bad_backend_config), "team_s3": team_s3.endpoint, "denying_s3": denying_s3,
            "yolov5n_checkpoint": _yolov5n_checkpoint(root / "yolov5n-3-classes.pt"), **_own_datasets(root)}


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


def _contents(server) -> Tuple[set, set]:
    """Every experiment and every run on a server: any status, deleted ones too."""
    from mlflow.entities import ViewType

    client = server.client()
    experiments = {(e.experiment_id, e.name, e.lifecycle_stage)
                   for e in client.search_experiments(view_type=ViewType.ALL, max_results=50000)}
    runs, token = set(), None
    while True:
        page = client.search_runs([e[0] for e in experiments], run_view_type=ViewType.ALL, max_results=50000,
                                  page_token=token)
        runs |= {(r.info.run_id, r.info.experiment_id, r.info.status, r.info.lifecycle_stage) for r in page}
        token = page.token
        if not token:
            return experiments, runs


def _assert_one_failed_run_at_most_added(before: Tuple[set, set], after: Tuple[set, set]) -> None:
    (experiments_before, runs_before), (experiments_after, runs_after) = before, after
    added = runs_after - runs_before
    assert runs_before <= runs_after and len(added) == 1, (runs_before - runs_after, added)
    [(_, experiment_id, status, _)] = added
    assert status == "FAILED"
    assert experiments_before <= experiments_after
    assert {e[0] for e in experiments_after - experiments_before} <= {experiment_id}


@pytest.fixture(scope="module")
def cuda_places() -> Dict[str, str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"first_missing_of_0_99": "0" if count == 0 else "99"}


def refuse(args: Tuple[str, ...], env: Dict[str, str], cwd: Path, exit_code: int, error: str, whole: bool = False,
           budget_s: Optional[float] = None) -> subprocess.CompletedProcess:
    """`python -m <args>`: its exit code, one `error:` line (the last on stderr), no traceback, and within budget."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    elapsed = time.monotonic() - started

    assert proc.returncode == exit_code, why(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], why(proc)
    assert errors[0] == error if whole else errors[0].startswith(error), errors[0]
    assert "Traceback" not in proc.stderr
    if budget_s is not None:
        print(f"refused in {elapsed:.1f} s (budget {budget_s:g} s + {STARTUP_ALLOWANCE_S:g} s allowance)")
        assert elapsed < budget_s + STARTUP_ALLOWANCE_S, (
            f"took {elapsed:.1f} s with mlflow.startup_timeout_s={budget_s:g}: the budget is not applied "
            f"(MLflow's own retries take about 4 minutes)")
    return proc


@pytest.mark.parametrize("row", ROWS, ids=[r.shown for r in ROWS])
def test_bad_input(row, places, tracking_server, bad_s3_server, bystander, cache_dir, tmp_path, request):
    fields = {**places, **(request.getfixturevalue("cuda_places") if "{first_missing" in row.error else {})}
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, YOLOV5_MLFLOW_CACHE=str(cache_dir))
    if row.on_main_server:
        env["MLFLOW_RUN_ID"] = bystander
    env.update({name: value.format(**places) for name, value in row.env})
    before = _record(tracking_server, bystander)
    main_before, bad_s3_before = _contents(tracking_server), _contents(bad_s3_server.tracking)

    refuse(tuple(a.format(**places) for a in row.args), env, tmp_path, row.exit_code, row.error.format(**fields),
           row.whole, row.budget_s)

    after = _record(tracking_server, bystander)
    if env.get("MLFLOW_RUN_ID") == bystander and row.exit_code == 2:
        # The run `mlflow run` opened for this process ends FAILED saying why, and nothing else is written to it.
        status, params, tags, metrics, artifacts = before
        assert after == ("FAILED", params, {**tags, "error": after[2].get("error")}, metrics, artifacts)
        assert row.error.format(**fields).removeprefix("error: ") in after[2]["error"]
        experiments, runs = main_before
        main_before = (experiments, {(i, e, "FAILED" if i == bystander else s, l) for i, e, s, l in runs})
    else:
        assert after == before  # nothing written to the existing run
    assert _contents(tracking_server) == main_before  # no experiment, no run, no other status changed
    if row.creates_failed_run:
        _assert_one_failed_run_at_most_added(bad_s3_before, _contents(bad_s3_server.tracking))
    else:
        assert _contents(bad_s3_server.tracking) == bad_s3_before


@pytest.mark.parametrize("target", ["closed_url", "silent_url"], ids=["nothing-listening", "never-answers"])
def test_an_unreachable_server_is_refused_within_the_default_budget(target, places, tracking_server, cache_dir,
                                                                   tmp_path):
    """No mlflow.startup_timeout_s given: conf/mlflow/default.yaml's applies, not MLflow's 4 minutes of retries."""
    url = places[target]
    env = client_env(MLFLOW_TRACKING_URI=url, YOLOV5_MLFLOW_CACHE=str(cache_dir))
    before = _contents(tracking_server)

    refuse(("train",), env, tmp_path, TRACKING_UNAVAILABLE,
           f"error: mlflow.tracking_uri: cannot use {url} (waited {DEFAULT_STARTUP_TIMEOUT_S:g} s, "
           f"mlflow.startup_timeout_s)", budget_s=DEFAULT_STARTUP_TIMEOUT_S)

    assert _contents(tracking_server) == before


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
    """docs/failures.md's "Bad input" table, which the README links to: the rows above, in the same order."""
    page = (REPO / "docs" / "failures.md").read_text()
    section = page.split("### Bad input", 1)[1].split("\n#", 1)[0]
    shown = re.findall(r"^\| `(.+?)` \|", section, flags=re.MULTILINE)
    assert shown == [row.shown for row in ROWS]
