"""A real Docker engine and registry, and the project's image built from its real Dockerfile and pushed.

Nothing can be pulled on these machines, so the Dockerfile's BASE_IMAGE (python:3.11-slim-bookworm) is
swapped, by its build arg and nothing else, for a Debian image made here with debootstrap. Building and
pushing the 7.6 GB CUDA image takes minutes: `ImageWarmup` does it on a thread of its own, started as soon
as the tests are collected, while the tests that need no Docker run (they are ordered first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

from testbed.servers import REPO, free_port, start, stop, wait_until_up

LOCAL_BASE = "yolov5-mlflow-test-base:bookworm"
# The persistent data root keeps built images between local test sessions; CI machines start empty anyway.
DOCKER_ROOT = Path(os.environ.get("TEST_DOCKER_ROOT", "/var/lib/yolov5-mlflow-tests/docker"))
# The repository the tests' Kubernetes backend config pushes to: the image's layers pushed there once stay there.
REPOSITORY = "yolov5-mlflow"
# The tracking server's image (deploy/mlflow-server.Dockerfile) that the Kubernetes stand-in runs as the cluster's.
SERVER_IMAGE = "yolov5-mlflow-test-server:3.17.2"


# The warm-up runs beside the tests on the same 2 cores: the engine (and every build and container under it) and
# debootstrap get what CPU and disk time the tests leave, instead of slowing every training the tests time out on.
_BACKGROUND = ["nice", "-n", "10", *(["ionice", "-c", "2", "-n", "7"] if shutil.which("ionice") else [])]


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _has_image(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def _run(command: list, what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


class ImageWarmup(threading.Thread):
    """Engine up, registry up, the project's image built, and its layers pushed: each step a milestone a test
    can wait for. The engine and registry are this object's to stop (`close`), unless an engine already ran."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(name="docker-image-warmup", daemon=True)
        self.workdir = workdir
        self.image = yaml.safe_load((REPO / "MLproject").read_text())["docker_env"]["image"]
        self.registry_url = ""
        self.error: Optional[BaseException] = None
        self.engine_up, self.registry_up, self.built, self.pushed, self.server_built = (
            threading.Event() for _ in range(5))
        self._daemon: Optional[subprocess.Popen] = None
        self._registry: Optional[subprocess.Popen] = None

    def run(self) -> None:
        try:
            self._start_engine()
            self.engine_up.set()
            self._start_registry()
            self.registry_up.set()
            self._build()
            self.built.set()
            self._push()
            self.pushed.set()
            self._build_server()
            self.server_built.set()
        except BaseException as error:  # noqa: BLE001 - handed to whichever test waits for a milestone
            self.error = error
        finally:
            for milestone in (self.engine_up, self.registry_up, self.built, self.pushed, self.server_built):
                milestone.set()  # nobody waits forever on a failed warm-up

    def wait(self, milestone: threading.Event) -> None:
        milestone.wait()
        if self.error is not None:
            raise RuntimeError(f"the Docker warm-up failed: {self.error}") from self.error

    def _start_engine(self) -> None:
        if engine_answers():
            return
        if shutil.which("dockerd") is None:
            raise RuntimeError("no Docker engine: `make test` installs Debian's docker.io "
                               "(scripts/install-system-deps.sh)")
        DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "dockerd.log"
        self._daemon = start([*_BACKGROUND, "dockerd", "--data-root", str(DOCKER_ROOT)], dict(os.environ), log)
        deadline = time.monotonic() + 60
        while not engine_answers():
            if time.monotonic() > deadline or self._daemon.poll() is not None:
                raise RuntimeError(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def _start_registry(self) -> None:
        """Debian's docker-registry; 127.0.0.0/8 counts as insecure, so an HTTP push works."""
        port = free_port()
        config = self.workdir / "registry.yml"
        storage = DOCKER_ROOT.parent / "registry"  # beside the engine's images: layers pushed once stay pushed
        config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(storage)}},
                                          "http": {"addr": f"127.0.0.1:{port}"}}))
        log = self.workdir / "registry.log"
        self._registry = start(["docker-registry", "serve", str(config)], dict(os.environ), log)
        wait_until_up(f"http://127.0.0.1:{port}/v2/", self._registry, log, timeout_s=60)
        self.registry_url = f"127.0.0.1:{port}"

    def _build(self) -> None:
        if not _has_image(LOCAL_BASE):
            _run([*_BACKGROUND, str(REPO / "tests" / "docker" / "make-local-base.sh"), LOCAL_BASE],
                 "making the local base image")
        _run(["docker", "build", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "-t", self.image, str(REPO)],
             "docker build of the project's Dockerfile")

    def _build_server(self) -> None:
        """deploy/mlflow-server.Dockerfile over the same local Debian (its pip installs reach PyPI)."""
        _run([*_BACKGROUND, "docker", "build", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "-t", SERVER_IMAGE, "-f",
              str(REPO / "deploy" / "mlflow-server.Dockerfile"), str(REPO / "deploy")],
             "docker build of deploy/mlflow-server.Dockerfile")

    def _push(self) -> None:
        """The image's layers into the registry repository the Kubernetes tests push to, so their own pushes
        (the image plus one layer of project code) send only that layer."""
        # Tags an earlier session's registry (another port) left on the images `mlflow run` builds: MLflow pushes an
        # image's first tag, which could name that registry, gone now.
        stale = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                               text=True).stdout.split()
        for tag in stale:
            if tag.split("/", 1)[-1].startswith(f"{REPOSITORY}:") and not tag.startswith(f"{self.registry_url}/"):
                subprocess.run(["docker", "rmi", "--no-prune", tag], capture_output=True)
        warm = f"{self.registry_url}/{REPOSITORY}:warmup"
        _run(["docker", "tag", self.image, warm], "docker tag")
        _run(["docker", "push", warm], "docker push of the image's layers")

    def close(self) -> None:
        if self.is_alive():
            self.join(timeout=5)  # a build still going stops with the engine below
        for process in (self._registry, self._daemon):
            if process is not None:
                stop(process)
