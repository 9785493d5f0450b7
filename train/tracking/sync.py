"""`python -m train.tracking.sync <run folder>`: deliver what a run's tracking server did not take.

When the server was still unreachable as training ended, the run folder (Hydra's output folder) got
a `tracking-pending.json` with the undelivered metrics and the end state the run is owed. This
sends the metrics (with their original timestamps and steps), uploads the outputs, ends the run
and removes the file. Running it twice, or after a partial success, is safe. The file never holds a
login: a tracking server with basic auth takes it from MLFLOW_TRACKING_USERNAME/PASSWORD, or from
--tracking-uri.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from mlflow import MlflowClient

from train.errors import EXIT_OK, ConfigError, RecipeError, TrackingUnavailable
from train.tracking.record import RunRecord
from train.tracking.run import check_reachable, one_line, upload_outputs
from train.tracking.spool import PENDING_FILE, PendingRecord


def sync(run_dir: Path, timeout_s: float, tracking_uri: Optional[str] = None) -> str:
    """Deliver `run_dir`'s pending record; the run's end state."""
    record = PendingRecord.load(run_dir)
    uri = tracking_uri or record.tracking_uri
    check_reachable(uri, timeout_s)
    run = RunRecord(MlflowClient(tracking_uri=uri), record.run_id)
    run.log_metrics([m for points in record.epochs for m in points.as_metrics()])
    if not record.outputs_uploaded:
        upload_outputs(run, run_dir, run_dir / "yolov5", run_dir / "train.log")
    run.set_terminated(record.status)
    (run_dir / PENDING_FILE).unlink()
    return record.status


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tracking.sync", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help=f"a run's output folder holding {PENDING_FILE}")
    parser.add_argument("--timeout-s", type=float, default=15.0, help="how long to wait for the server")
    parser.add_argument("--tracking-uri", default=None, help="the server, if not the one the run was tracked to")
    args = parser.parse_args()
    if not (args.run_dir / PENDING_FILE).is_file():
        raise ConfigError(f"run_dir: no {PENDING_FILE} in {args.run_dir}: nothing to deliver")
    try:
        status = sync(args.run_dir, args.timeout_s, args.tracking_uri)
    except TrackingUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - the record stays in place for the next attempt
        raise RecipeError(f"delivering {args.run_dir / PENDING_FILE} failed: {one_line(error)}") from error
    print(f"delivered {args.run_dir / PENDING_FILE}; the run ended {status}")
    return EXIT_OK


if __name__ == "__main__":
    from train.exits import exit_after

    exit_after(main)
