"""Real servers for the tests and the benchmarks (bench/), each on a free loopback port.

moto's standalone S3 server stands where MinIO stands in the cluster (no MinIO binary is
reachable here); in front of it a real `mlflow server` with a SQLite (or PostgreSQL) backend
proxies artifacts (`--serve-artifacts --artifacts-destination s3://mlflow`), as deploy/ runs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout_s} s:\n{log.read_text()[-3000:]}")


def start(command: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    # A session of its own: mlflow server forks uvicorn workers, all stopped together by stop().
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class TrackingServer:
    uri: str
    s3_endpoint: str
    log: Path
    pid: int = 0  # the `mlflow server` process, leader of a session of its own (its workers), when started here

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **boto_credentials())

    def bucket_keys(self, prefix: str) -> List[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def run_ids(self) -> List[str]:
        client = self.client()
        experiments = [e.experiment_id for e in client.search_experiments()]
        return [r.info.run_id for r in client.search_runs(experiments, max_results=10000)]


def boto_credentials() -> Dict[str, str]:
    return {"aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"]}


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto's standalone S3 server with the `mlflow` bucket; its endpoint URL."""
    port = free_port()
    log = workdir / "moto.log"
    server = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], {**os.environ, **S3_CREDENTIALS},
                   log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{endpoint}/moto-api/", server, log)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **boto_credentials()).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        stop(server)


class ManagedTrackingServer:
    """`mlflow server` as deploy/ runs it, which a test may stop and start again (same port, same database).

    Only the server knows the S3 endpoint and credentials: training processes get none.
    """

    def __init__(self, workdir: Path, backend_store_uri: str, s3_endpoint: str, workers: int = 1,
                 **env: str) -> None:
        self.port = free_port()
        self.log = workdir / "mlflow-server.log"
        # As deploy/mlflow.yaml runs it: no job runners (GenAI features training never calls).
        self.env = {**os.environ, **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
        self.command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                        "--backend-store-uri", backend_store_uri,
                        "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}", "--workers", str(workers)]
        self.tracking = TrackingServer(uri=f"http://127.0.0.1:{self.port}", s3_endpoint=s3_endpoint, log=self.log)
        self._process: subprocess.Popen | None = None

    def start(self) -> TrackingServer:
        with open(self.log, "ab") as out:  # appended: one log over restarts
            self._process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        wait_until_up(f"{self.tracking.uri}/health", self._process, self.log)
        self.tracking.pid = self._process.pid
        return self.tracking

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process)
            self._process = None


NETGUARD = REPO / "testbed" / "netguard"  # sitecustomize.py: no connection outside loopback (see its docstring)
NETGUARD_LOG_ENV = "YOLOV5_MLFLOW_NETGUARD_LOG"
_netguard_log: Path | None = None


def netguard_log() -> Path:
    """The file where the network guard of this session's training processes writes each refused connection.

    One per test session (or benchmark), made on first use: tests/conftest.py fails a test that leaves a line in it.
    """
    global _netguard_log
    if _netguard_log is None:
        fd, name = tempfile.mkstemp(prefix="yolov5-mlflow-netguard-", suffix=".log")
        os.close(fd)
        _netguard_log = Path(name)
    return _netguard_log


# Set by pytest and CI services, never in a user's training job; MLflow turns its telemetry off when it sees one
# (mlflow/telemetry/utils.py), so with them a training process under test would behave unlike a user's.
_TEST_RUNNER_MARKS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "JENKINS_URL", "TRAVIS",
                      "TF_BUILD", "BUILDKITE", "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN")


def client_env(**extra: str) -> Dict[str, str]:
    """The environment of a training process: no S3 credentials (the server proxies artifacts), no network.

    testbed/netguard/ comes first on PYTHONPATH: its sitecustomize refuses (and logs to netguard_log()) any
    connection or name lookup beyond loopback, in this process and every Python process it starts.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AWS_")) and k not in ("HYDRA_FULL_ERROR", *_TEST_RUNNER_MARKS)}
    env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), str(REPO)])
    env[NETGUARD_LOG_ENV] = str(netguard_log())
    env.update(extra)
    return env
