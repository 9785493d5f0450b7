"""Fixtures: the real servers of testbed/servers.py, started once per session and stopped at its end."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from testbed.servers import (BIN, BUCKET, REPO, S3_CREDENTIALS, ManagedTrackingServer, TrackingServer,  # noqa: F401
                           client_env, free_port, netguard_log, s3_server, start, stop, wait_until_up)


class _NetguardLog:
    """testbed/netguard's refusals (one line each) from every process started with client_env(), read once each."""

    def __init__(self, path: Path) -> None:
        self.path, self._read = path, 0

    def new_lines(self) -> List[str]:
        with open(self.path, "rb") as log:
            log.seek(self._read)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._read += len(complete)
        return complete.decode(errors="replace").splitlines()


def _refused(lines: List[str]) -> str:
    return ("a process started with client_env() reached beyond loopback (testbed/netguard refused it; a clean "
            "install must train without the network):\n  " + "\n  ".join(lines))


@pytest.fixture(scope="session")
def _netguard_session() -> Iterator[_NetguardLog]:
    log = _NetguardLog(netguard_log())
    yield log
    late = log.new_lines()  # from the teardown of session fixtures, after the last test's check
    if log.path.stat().st_size == 0:
        log.path.unlink()  # kept when it holds anything, to look at
    assert not late, _refused(late)


@pytest.fixture(autouse=True)
def no_network(_netguard_session: _NetguardLog) -> Iterator[None]:
    """Fails the test (in its teardown) whose processes, or the fixtures it set up, reached for the network."""
    yield
    refused = _netguard_session.new_lines()
    if refused:
        pytest.fail(_refused(refused), pytrace=False)


# MLflow's process-wide choices: mlflow.set_tracking_uri (the recipe's open_run calls it, so do tests) sets a module
# global and MLFLOW_TRACKING_URI, which every later MlflowClient() and register_model in this process reads first.
_MLFLOW_GLOBALS = {"mlflow.tracking._tracking_service.utils": "_tracking_uri",
                   "mlflow.tracking._model_registry.utils": "_registry_uri",
                   "mlflow.tracking.fluent": "_active_experiment_id"}
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def mlflow_process_state() -> Iterator[None]:
    """Each test leaves MLflow's tracking and registry URIs and active experiment as it found them: one test's
    SQLite store never becomes the store a later test's client talks to."""
    found = {module: getattr(sys.modules[module], name) if module in sys.modules else None
             for module, name in _MLFLOW_GLOBALS.items()}
    env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    yield
    for module, name in _MLFLOW_GLOBALS.items():
        if module in sys.modules:
            setattr(sys.modules[module], name, found[module])
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# The Docker warm-up of the session (testbed/docker.py), when any collected test needs Docker.
WARMUP = pytest.StashKey["ImageWarmup"]()
DOCKER_FIXTURES = {"docker_engine", "registry", "base_image"}


def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that need Docker go last, and the image they need is built and pushed meanwhile, in the background:
    minutes of building, pushing and waiting on the network that the other tests no longer wait behind.
    (list.sort is stable: within each group, the order pytest collected.)"""
    docker = [item for item in items if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if not docker or config.option.collectonly:
        return
    # The image's build is the warm-up's heaviest part, in its first minutes: tests that wait (on servers, outages,
    # timeouts) leave it CPU, while the recipe's 20-epoch training leaves it none, so that one goes after them.
    items.sort(key=lambda item: 2 if item in set(docker) else 1 if "recipe_run" in item.fixturenames else 0)
    from testbed.docker import ImageWarmup

    warmup = config.stash[WARMUP] = ImageWarmup(Path(tempfile.mkdtemp(prefix="yolov5-mlflow-docker-")))
    warmup.start()


def pytest_sessionfinish(session, exitstatus) -> None:
    warmup = session.config.stash.get(WARMUP, None)
    if warmup is not None:
        warmup.close()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's standalone S3 server with the `mlflow` bucket: where MinIO stands in the cluster."""
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


def start_tracking_server(workdir: Path, backend_store_uri: str, s3_endpoint: str) -> Iterator[TrackingServer]:
    """A tracking server for as long as the generator is open."""
    server = ManagedTrackingServer(workdir, backend_store_uri, s3_endpoint)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory, s3_endpoint) -> Iterator[TrackingServer]:
    """The tracking server with a SQLite backend, as deploy/ runs it in the cluster."""
    workdir = tmp_path_factory.mktemp("tracking")
    yield from start_tracking_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}", s3_endpoint)


DATA_BUCKET = "datasets"


@dataclass
class TeamS3:
    """The team's own S3 (MinIO in the cluster): datasets and weights live there, apart from MLflow's artifacts.

    A moto server of its own, so its access log holds only the requests for the team's data: a test counts
    the downloads the recipe made at the server, not in anything the recipe says about itself."""

    endpoint: str
    log: Path

    def client(self):
        import boto3

        from testbed.servers import boto_credentials

        return boto3.client("s3", endpoint_url=self.endpoint, **boto_credentials())

    def env(self) -> Dict[str, str]:
        """What a training process (or the minio-credentials Secret) gives to read from it."""
        return {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def upload_folder(self, folder: Path, prefix: str) -> int:
        client = self.client()
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        for path in files:
            client.upload_file(str(path), DATA_BUCKET, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
        return len(files)

    def object_downloads(self, key_prefix: str) -> int:
        """GET requests for objects under `key_prefix` (not listings) the server has answered so far."""
        marker = f'"GET /{DATA_BUCKET}/{key_prefix}'
        return sum(1 for line in self.log.read_text().splitlines() if marker in line and "?" not in line.split('"')[1])


@pytest.fixture(scope="session")
def team_s3(tmp_path_factory) -> Iterator[TeamS3]:
    workdir = tmp_path_factory.mktemp("team-s3")
    with s3_server(workdir) as endpoint:
        server = TeamS3(endpoint, workdir / "moto.log")
        server.client().create_bucket(Bucket=DATA_BUCKET)
        yield server


# Small and fast: a couple of seconds per epoch on two CPU cores (conf/debug/tiny.yaml).
TINY = ["debug=tiny"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One dataset cache for the session, so each synthetic dataset is generated once."""
    return tmp_path_factory.mktemp("cache")


def train_cli(cwd: Path, cache_dir: Path, overrides: List[str], env: Dict[str, str] | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m train` as a user runs it, in a working folder of its own."""
    full_env = {"YOLOV5_MLFLOW_CACHE": str(cache_dir), **(env or client_env())}
    return subprocess.run([sys.executable, "-m", "train", *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def training_metrics(run) -> list:
    """The run's metric keys but MLflow's system metrics (system/...), which are sampled by time, not per epoch."""
    from train.tracking.names import is_training_metric

    return sorted(filter(is_training_metric, run.data.metrics))


def why(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """What a failed `python -m train` said: its `error:` lines and the sweep's verdict, then the end of stderr.

    Parallel trials interleave their output, so a failing trial's own line can sit far above the tail."""
    said = [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("error:") or line.startswith("MLflow sweep run")]
    return "\n".join(said + ["--- end of stderr ---", proc.stderr[-tail:]])


@pytest.fixture
def train(tmp_path, cache_dir):
    """train(*overrides, env=...) -> CompletedProcess, run in this test's tmp_path."""
    return lambda *overrides, **kw: train_cli(tmp_path, cache_dir, list(overrides), **kw)


def yolo_dataset(where: Path, seed: int = 11, train_images: int = 32, val_images: int = 16) -> Path:
    """A user's own YOLOv5 dataset: images/, labels/ and a data.yaml naming its classes (the synthetic shapes)."""
    import shutil

    import yaml

    from train.data.synthetic import CLASS_NAMES, SyntheticSpec, generate

    made = generate(SyntheticSpec(train_images=train_images, val_images=val_images, image_size=64, seed=seed), where)
    root = where / "widgets"
    shutil.move(str(made), str(root))
    (root / "dataset.json").unlink(missing_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": list(CLASS_NAMES)}))
    return root


def zipped(folder: Path, archive: Path) -> Path:
    """`folder`'s files at the top of a zip archive."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive
