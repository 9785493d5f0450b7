"""`python -m bench.system_metrics`: the CPU time one sample of MLflow's system metrics costs.

What MLflow's monitor thread does once per sampling interval (mlflow/system_metrics/system_metrics_monitor.py,
samples_before_logging=1): read the machine (psutil, and NVML where there is a GPU), ask the server whether the
run is still RUNNING, and log the sample as one batch. Timed here `--samples` times in a row against the bench's
tracking server (as deploy/ runs it: one uvicorn worker, artifacts proxied to S3): the CPU time of the calling
thread (what the training process pays) and of the server's processes, per sample, and what that is at the
default interval of 10 s. A few seconds on 2 cores, after the server's start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

DEFAULT_INTERVAL_S = 10.0


def _server_cpu_s(pid: int) -> float:
    import psutil

    leader = psutil.Process(pid)
    total = 0.0
    for process in [leader, *leader.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def sample_cost(uri: str, server_pid: int, samples: int) -> Dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("bench-system-metrics"))
    monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=uri)

    def one() -> None:
        monitor.collect_metrics()
        MlflowClient(uri).get_run(run.info.run_id)  # the monitor's check that the run is still RUNNING
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()  # BatchMetricsLogger sends at once when samples are seconds apart

    one()  # connections opened, imports done
    collect = []
    for _ in range(samples):
        started = time.thread_time()
        monitor.collect_metrics()
        collect.append(time.thread_time() - started)
    monitor.aggregate_metrics()
    for m in monitor.monitors:
        m.clear_metrics()
    server_before, client_before, wall_before = _server_cpu_s(server_pid), time.thread_time(), time.monotonic()
    for _ in range(samples):
        one()
    client_ms = (time.thread_time() - client_before) / samples * 1000
    server_ms = (_server_cpu_s(server_pid) - server_before) / samples * 1000
    client.set_terminated(run.info.run_id)
    return {"monitors": [type(m).__name__ for m in monitor.monitors], "samples": samples,
            "read_machine_ms": round(statistics.median(collect) * 1000, 3),
            "client_cpu_ms_per_sample": round(client_ms, 2), "server_cpu_ms_per_sample": round(server_ms, 2),
            "wall_ms_per_sample": round((time.monotonic() - wall_before) / samples * 1000, 1),
            "client_core_pct_at_10s": round(client_ms / (DEFAULT_INTERVAL_S * 1000) * 100, 3),
            "server_core_pct_at_10s": round(server_ms / (DEFAULT_INTERVAL_S * 1000) * 100, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.system_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    from train import offline

    offline.no_telemetry()  # before MLflow is imported
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from bench.harness import servers

    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-sm-") as tmp:
        with servers(Path(tmp)) as server:
            result = sample_cost(server.uri, server.pid, args.samples)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
