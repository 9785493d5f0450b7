"""`python -m train.tracking.sync <run folder>`: deliver what a run's tracking server did not take.

When the server was still unreachable as training ended, the run folder (Hydra's output folder) got
a `tracking-pending.json` with the undelivered metrics and the end state the run is owed. This
sends the metrics (with their original timestamps and steps), uploads the outputs, ends the run
and removes the file. Running it twice, or after a partial success, is safe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow import MlflowClient

from train.errors import TrackingUnavailable
from train.tracking.run import check_reachable, one_line, upload_outputs
from train.tracking.spool import PENDING_FILE, PendingRecord


def sync(run_dir: Path, timeout_s: float) -> str:
    """Deliver `run_dir`'s pending record; the run's end state."""
    record = PendingRecord.load(run_dir)
    check_reachable(record.tracking_uri, timeout_s)
    client = MlflowClient(tracking_uri=record.tracking_uri)
    client.log_batch(record.run_id, [m for points in record.epochs for m in points.as_metrics()])
    if not record.outputs_uploaded:
        upload_outputs(client, record.run_id, run_dir, run_dir / "yolov5", run_dir / "train.log")
    client.set_terminated(record.run_id, record.status)
    (run_dir / PENDING_FILE).unlink()
    return record.status


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train.tracking.sync", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help=f"a run's output folder holding {PENDING_FILE}")
    parser.add_argument("--timeout-s", type=float, default=15.0, help="how long to wait for the server")
    args = parser.parse_args()
    if not (args.run_dir / PENDING_FILE).is_file():
        print(f"error: run_dir: no {PENDING_FILE} in {args.run_dir}: nothing to deliver", file=sys.stderr)
        sys.exit(2)
    try:
        status = sync(args.run_dir, args.timeout_s)
    except TrackingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except Exception as error:  # noqa: BLE001 - the record stays in place for the next attempt
        print(f"error: delivering {args.run_dir / PENDING_FILE} failed: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    print(f"delivered {args.run_dir / PENDING_FILE}; the run ended {status}")


if __name__ == "__main__":
    main()
