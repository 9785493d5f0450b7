"""Fixtures of the end-to-end tests: Docker (testbed/docker.py), PostgreSQL, and the tracking servers' variants."""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import yaml

from testbed.docker import ImageWarmup
from tests.conftest import WARMUP, REPO, ManagedTrackingServer, TrackingServer, free_port, why

@pytest.fixture(scope="session")
def docker_warmup(request) -> ImageWarmup:
    """The engine, registry and image the session's warm-up started at collection (tests/conftest.py)."""
    warmup = request.config.stash.get(WARMUP, None)
    if warmup is None:  # a Docker fixture asked for indirectly: start it now
        warmup = request.config.stash[WARMUP] = ImageWarmup(Path(tempfile.mkdtemp(prefix="yolov5-mlflow-docker-")))
        warmup.start()
    return warmup


@pytest.fixture(scope="session")
def docker_engine(docker_warmup) -> None:
    """The running engine if there was one, else a dockerd started (and stopped) by the session."""
    docker_warmup.wait(docker_warmup.engine_up)


@pytest.fixture(scope="session")
def registry(docker_warmup) -> str:
    """A local Docker registry holding the project's image's layers already (pushed by the warm-up)."""
    docker_warmup.wait(docker_warmup.pushed)
    return docker_warmup.registry_url


@pytest.fixture(scope="session")
def base_image(docker_warmup) -> str:
    """MLproject's docker_env image, built from the project's Dockerfile over a locally made Debian."""
    docker_warmup.wait(docker_warmup.built)
    return docker_warmup.image


@pytest.fixture(scope="session")
def project_copy(tmp_path_factory) -> Path:
    """The project as git sees it (tracked and new files, nothing ignored).

    `mlflow run` copies the whole project folder into the image, ignoring .dockerignore: run from the
    working folder, .venv/ (gigabytes) and old outputs would go along.
    """
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp_path_factory.mktemp("project") / "yolov5-mlflow"
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def registry_digest(registry_url: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{registry_url}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        pytest.fail("no PostgreSQL server: `make test` installs Debian's postgresql (scripts/install-system-deps.sh)")
    return str(found[-1])


def _as_postgres(command: list) -> list:
    # initdb and pg_ctl refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A PostgreSQL server of the session's own on a free loopback port, with an empty `mlflow` database."""
    # Not under pytest's tmp folder: that is private to root, and the server runs as postgres.
    workdir = Path(tempfile.mkdtemp(prefix="yolov5-mlflow-postgres-"))
    data, socket_dir, log = workdir / "data", workdir / "socket", workdir / "postgres.log"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(socket_dir, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([_postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    pg_ctl = _postgres_bin("pg_ctl")
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(log), "-w", "start", "-o",
                                 f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1"]),
                   check=True, capture_output=True)
    try:
        subprocess.run(_as_postgres([_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     "mlflow"]), check=True, capture_output=True)
        # +psycopg2: plain postgresql:// makes SQLAlchemy 2 look for psycopg 3, and the server never turns healthy.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_tracking_server(tmp_path_factory, postgres_uri, s3_endpoint):
    from tests.conftest import start_tracking_server

    yield from start_tracking_server(tmp_path_factory.mktemp("tracking-postgres"), postgres_uri, s3_endpoint)


# --- A tracking server behind MLflow's basic-auth app, started the way deploy/auth/ starts it -------------------

AUTH_DEPLOY = REPO / "deploy" / "auth"


@dataclass
class AuthTrackingServer:
    """The server, and what the test put in the mlflow-auth Secret (deploy/auth/auth-secret.yaml)."""

    server: TrackingServer
    secret: Dict[str, str]
    readiness_path: str

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def admin(self) -> Tuple[str, str]:
        return self.secret["MLFLOW_AUTH_ADMIN_USERNAME"], self.secret["MLFLOW_AUTH_ADMIN_PASSWORD"]


@pytest.fixture(scope="session")
def auth_tracking_server(tmp_path_factory, s3_endpoint) -> Iterator[AuthTrackingServer]:
    """`mlflow server` as deploy/ runs it with deploy/auth/ on: its ini, its Secret's keys as env, its extra args.

    Only the auth database's path differs: it lies in the test's folder, not on the pod's volume.
    """
    workdir = tmp_path_factory.mktemp("tracking-auth")
    ini = configparser.ConfigParser()
    ini.read(AUTH_DEPLOY / "basic_auth.ini")
    ini["mlflow"]["database_uri"] = f"sqlite:///{workdir / 'basic_auth.db'}"
    with open(workdir / "basic_auth.ini", "w") as out:
        ini.write(out)
    # Fresh values each session, so a leak of the password can be searched for.
    secret = {"MLFLOW_AUTH_ADMIN_USERNAME": "e2e-admin", "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(18),
              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    template = yaml.safe_load((AUTH_DEPLOY / "auth-secret.yaml").read_text())["stringData"]
    assert set(secret) == set(template), "deploy/auth/auth-secret.yaml's keys changed: update this fixture"
    patch = yaml.safe_load((AUTH_DEPLOY / "mlflow-auth-patch.yaml").read_text())  # JSON patch of the Deployment
    extra_args = [op["value"] for op in patch if op["path"].endswith("/args/-")]
    readiness_path = next(op["value"] for op in patch if op["path"].endswith("/readinessProbe/httpGet/path"))

    server = ManagedTrackingServer(workdir, f"sqlite:///{workdir / 'mlflow.db'}", s3_endpoint,
                                   MLFLOW_AUTH_CONFIG_PATH=str(workdir / "basic_auth.ini"), **secret)
    server.command += extra_args
    try:
        yield AuthTrackingServer(server.start(), secret, readiness_path)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def recipe_run(tracking_server, cache_dir, tmp_path_factory):
    """One training with the recipe's defaults (20 epochs, a couple of minutes): the learning test, the UI test
    and the model tests all look at this run."""
    from tests.conftest import client_env, train_cli

    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-learning")
    proc = train_cli(tmp_path_factory.mktemp("recipe"), cache_dir, ["train.workers=0"], env=env)
    assert proc.returncode == 0, why(proc)
    client = tracking_server.client()
    [run] = client.search_runs([client.get_experiment_by_name("e2e-learning").experiment_id])
    return run
