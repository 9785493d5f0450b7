"""A real Docker engine and registry, and the project's base image built from its real Dockerfile.

Nothing can be pulled on these machines, so the Dockerfile's BASE_IMAGE (python:3.11-slim-bookworm)
is swapped, by its build arg and nothing else, for a Debian image made here with debootstrap.
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import yaml

from tests.conftest import (REPO, ManagedTrackingServer, TrackingServer, free_port, start, stop, wait_until_up,
                            why)

LOCAL_BASE = "yolov5-mlflow-test-base:bookworm"
# The persistent data root keeps built images between local test sessions; CI machines start empty anyway.
DOCKER_ROOT = Path(os.environ.get("TEST_DOCKER_ROOT", "/var/lib/yolov5-mlflow-tests/docker"))


def _docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory) -> Iterator[None]:
    """The running engine if there is one, else a dockerd started (and stopped) by the session."""
    if _docker_answers():
        yield
        return
    if shutil.which("dockerd") is None:
        pytest.fail("no Docker engine: `make test` installs Debian's docker.io (scripts/install-system-deps.sh)")
    DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    daemon = start(["dockerd", "--data-root", str(DOCKER_ROOT)], dict(os.environ), log)
    deadline = time.monotonic() + 60
    while not _docker_answers():
        if time.monotonic() > deadline or daemon.poll() is not None:
            stop(daemon)
            pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield
    finally:
        stop(daemon)


@pytest.fixture(scope="session")
def registry(docker_engine, tmp_path_factory) -> Iterator[str]:
    """A local Docker registry (Debian's docker-registry); 127.0.0.0/8 counts as insecure, so HTTP push works."""
    workdir = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = workdir / "config.yml"
    storage = DOCKER_ROOT.parent / "registry"  # beside the engine's images: layers pushed once stay pushed
    config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(storage)}},
                                      "http": {"addr": f"127.0.0.1:{port}"}}))
    log = workdir / "registry.log"
    server = start(["docker-registry", "serve", str(config)], dict(os.environ), log)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v2/", server, log, timeout_s=60)
        yield f"127.0.0.1:{port}"
    finally:
        stop(server)


def _has_image(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """MLproject's docker_env image, built from the project's Dockerfile over a locally made Debian."""
    if not _has_image(LOCAL_BASE):
        subprocess.run([str(REPO / "tests" / "docker" / "make-local-base.sh"), LOCAL_BASE], check=True)
    image = yaml.safe_load((REPO / "MLproject").read_text())["docker_env"]["image"]
    build = subprocess.run(["docker", "build", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "-t", image, str(REPO)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return image


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
