"""The artifact path (5): uploads through the tracking server's proxy against boto3 straight to the same S3."""

from __future__ import annotations

import os
import time
from pathlib import Path
from statistics import median
from typing import Dict

import boto3
from mlflow import MlflowClient

from bench.harness import Pairs, interleaved
from testbed.servers import BUCKET, TrackingServer, boto_credentials

MB = 1024 * 1024


def _file(folder: Path, size_mb: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"payload-{size_mb}mb.bin"
    if not path.is_file() or path.stat().st_size != size_mb * MB:
        with open(path, "wb") as out:
            for _ in range(size_mb):
                out.write(os.urandom(MB))  # incompressible, like weights
    return path


def direct_upload_s(server: TrackingServer, path: Path) -> float:
    s3 = boto3.client("s3", endpoint_url=server.s3_endpoint, **boto_credentials())
    started = time.monotonic()
    s3.upload_file(str(path), BUCKET, f"bench-direct/{path.name}")
    return time.monotonic() - started


def proxied_upload_s(client: MlflowClient, run_id: str, path: Path) -> float:
    started = time.monotonic()
    client.log_artifact(run_id, str(path), "bench-proxied")
    return time.monotonic() - started


def artifact_path(server: TrackingServer, workdir: Path, sizes_mb=(4, 40, 400), pairs: int = 5) -> Dict[str, Dict]:
    """Per file size: direct boto3 (A) against MLflow's proxied upload (B), seconds and MB/s."""
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("bench-artifacts")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("bench-artifacts")
    run_id = client.create_run(experiment_id).info.run_id
    results = {}
    for size in sizes_mb:
        path = _file(workdir, size)
        measured: Pairs = interleaved(pairs, lambda: direct_upload_s(server, path),
                                      lambda: proxied_upload_s(client, run_id, path))
        results[f"{size}MB"] = {**measured.summary(), "direct_MB_per_s": round(size / median(measured.a), 1),
                               "proxied_MB_per_s": round(size / median(measured.b), 1)}
        path.unlink()
    client.set_terminated(run_id)
    return results


def direct_throughput_mb_s(server: TrackingServer, workdir: Path, size_mb: int = 40, repeats: int = 5) -> float:
    """boto3's median throughput to the S3 server, the yardstick for the end-of-run tail."""
    path = _file(workdir, size_mb)
    seconds = sorted(direct_upload_s(server, path) for _ in range(repeats))[repeats // 2]
    path.unlink()
    return size_mb / seconds
