"""The tracking server's round trip (8): one uvicorn worker, as deploy/ runs it, against MLflow's default four.

With more than one worker uvicorn binds the listening socket itself and leaves Nagle's algorithm on for the
connections it accepts (uvicorn issue #3149), so a request on a kept-alive connection (every MLflow client
call after the first) waits for the client's delayed ACK. This is the figure behind deploy/'s `--workers=1`.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median
from typing import Dict

from mlflow import MlflowClient

from bench.harness import interleaved
from testbed.servers import ManagedTrackingServer, TrackingServer


def _median_call_s(uri: str, calls: int) -> float:
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # the connection opened, kept alive from here
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        client.search_experiments(max_results=1)
        seconds.append(time.perf_counter() - started)
    return median(seconds)


def round_trip(server: TrackingServer, workdir: Path, pairs: int, calls: int = 20) -> Dict[str, object]:
    """Median seconds of one MLflow client call: deploy/'s single worker (A) against four workers (B)."""
    workdir.mkdir(parents=True, exist_ok=True)
    four = ManagedTrackingServer(workdir, f"sqlite:///{workdir / 'mlflow.db'}", server.s3_endpoint, workers=4)
    try:
        other = four.start()
        measured = interleaved(pairs, lambda: _median_call_s(server.uri, calls),
                               lambda: _median_call_s(other.uri, calls))
    finally:
        four.stop()
    return {**measured.summary(), "calls_per_figure": calls}
