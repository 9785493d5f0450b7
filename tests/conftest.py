"""Fixtures: the real servers of testbed/servers.py, started once per session and stopped at its end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from testbed.servers import (BUCKET, REPO, S3_CREDENTIALS, ManagedTrackingServer, TrackingServer,  # noqa: F401
                           client_env, free_port, s3_server, start, stop, wait_until_up)


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
