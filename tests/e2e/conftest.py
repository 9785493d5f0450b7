"""Fixtures of the end-to-end tests: Docker (testbed/docker.py), PostgreSQL, and the tracking servers' variants."""

from __future__ import annotations

import configparser
import json
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
    # The hosts deploy/mlflow.yaml allows: the Kubernetes test's pods reach this server as mlflow-service.
    deployment = next(d for d in yaml.safe_load_all((REPO / "deploy" / "mlflow.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    allowed = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
               if a.startswith("--allowed-hosts=")]
    server.command += [*extra_args, *allowed]
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


@pytest.fixture(scope="session")
def server_image(docker_warmup) -> str:
    """The tracking server's image, built from deploy/mlflow-server.Dockerfile."""
    docker_warmup.wait(docker_warmup.server_built)
    from testbed.docker import SERVER_IMAGE

    return SERVER_IMAGE


IN_CLUSTER_TRACKING_URI = "http://mlflow-service.kubeflow.svc.cluster.local:5000"


@dataclass
class Cluster:
    """The Kubernetes stand-in with deploy/'s tracking stack in it: the MLflow server's Deployment as a container
    on the pods' network (SQLite on a volume, artifacts proxied to S3), moto as the minio-service."""

    standin: "KubeStandIn"
    server: "Deployment"
    s3_endpoint: str  # moto, from this machine
    readiness: dict  # the Deployment's readiness probe

    def ready(self) -> bool:
        probe = self.readiness["httpGet"]
        request = urllib.request.Request(f"{self.server.host_url}{probe['path']}",
                                         headers={h["name"]: h["value"] for h in probe.get("httpHeaders", [])})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    @property
    def uri(self) -> str:
        """The server as the submitter reaches it (a port-forward); pods use IN_CLUSTER_TRACKING_URI."""
        return self.server.host_url

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def s3(self):
        return TrackingServer(self.uri, self.s3_endpoint, Path("/dev/null")).s3()

    def bucket_keys(self, prefix: str) -> list:
        return TrackingServer(self.uri, self.s3_endpoint, Path("/dev/null")).bucket_keys(prefix)

    def reset(self) -> None:
        """Between tests: the Jobs and their pods gone, the Secrets as the stack has them."""
        self.standin.forget_jobs()
        self.standin.secrets = {"minio-credentials": dict(self.standin.secrets["minio-credentials"])}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, server_image, registry) -> Iterator[Cluster]:
    from testbed.servers import S3_CREDENTIALS, s3_server
    from tests.e2e.kube_standin import KubeStandIn

    documents = [d for d in yaml.safe_load_all((REPO / "deploy" / "mlflow.yaml").read_text()) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    service = next(d for d in documents if d["kind"] == "Service")
    with s3_server(tmp_path_factory.mktemp("cluster-s3")) as endpoint, KubeStandIn() as standin:
        minio = standin.host_service("minio-service", "kubeflow", 9000, int(endpoint.rsplit(":", 1)[1]))
        standin.secrets["minio-credentials"] = {"AWS_ACCESS_KEY_ID": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                                "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                                "MLFLOW_S3_ENDPOINT_URL": minio}
        server = standin.deployment(deployment, service, server_image)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        stack = Cluster(standin, server, endpoint, container["readinessProbe"])
        deadline = time.monotonic() + 180
        while not stack.ready():
            assert time.monotonic() < deadline, f"the in-cluster tracking server is not ready:\n{server.logs()[-3000:]}"
            time.sleep(1)
        yield stack


def cpu_job_template(folder: Path, memory_limit: str = "8Gi", **spec: object) -> Path:
    """The project's Job template as a CPU-only cluster takes it (this machine is the stand-in's one node): no GPU,
    requests the node can hold; `spec` items set on the Job's spec (activeDeadlineSeconds=..., backoffLimit=...)."""
    job = yaml.safe_load((REPO / "kubernetes_job_template.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    container["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"},
                              "limits": {"cpu": "2", "memory": memory_limit}}
    job["spec"].update(spec)
    path = folder / "job-template.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture
def kube(tmp_path, registry, cluster):
    """The stand-in cluster with its tracking stack, a kubeconfig naming it, a backend config pushing to the local
    registry with the CPU template, and the submitter's env: the server through a port-forward, the pods' URI
    its in-cluster name (KUBE_MLFLOW_TRACKING_URI, which MLflow gives the Job instead)."""
    cluster.reset()
    kubeconfig = cluster.standin.kubeconfig(tmp_path / "kubeconfig", context="standin")
    backend = tmp_path / "k8s_backend_config.json"
    backend.write_text(json.dumps({"kube-context": "standin", "repository-uri": f"{registry}/yolov5-mlflow",
                                   "kube-job-template-path": str(cpu_job_template(tmp_path))}))
    from tests.conftest import client_env

    env = client_env(MLFLOW_TRACKING_URI=cluster.uri, KUBE_MLFLOW_TRACKING_URI=IN_CLUSTER_TRACKING_URI,
                     KUBECONFIG=str(kubeconfig))
    yield cluster, backend, env
    cluster.reset()
