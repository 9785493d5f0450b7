"""`python -m bench.checkpoints`: what uploading the resume checkpoint during training costs, figure 11 (also part
of `python -m bench`).

Interleaved pairs of the same tracked training to the same server, `mlflow.checkpoint_every_epochs=0` (A: the
checkpoint reaches the server only at the end) against `=1` (B: a snapshot at every epoch's end, uploaded in the
background, the newest only, its last.pt and best.pt logged as logged models; the default is every 5 minutes). Each run is watched from outside (bench.harness.Timed): its time per
epoch is from the first epoch's end to the last's, divided by the epochs between, so the start and the end of the
run are left out; the figure is the difference and the ratio of the two sides' medians. The end of a run (last
epoch to exit) is reported too: B waits there for an upload still in flight. The training thread's own share, the
copy of the files into the snapshot, is what each B run reports in its train.log (its median per snapshot, and
the snapshot's size). The uploads' CPU: the tracking server's per epoch (it proxies every upload to S3), the
difference of the two sides' medians; the training process's side of one snapshot's upload, measured alone
(thread CPU time). Here the tracking server and the S3 server share the machine's cores with the training, as in
no cluster: the wall-clock cost per epoch includes their work. Both sides log the final model at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any, Dict, List

from bench.harness import Timed, datasets, interleaved, servers
from bench.report import TABLE_HEADER, checkpoint_rows
from bench.tracking import Settings, TrackedRuns
from train.tracking.record import RunRecord

RESULTS = Path(__file__).resolve().parent / "results"
_SUMMARY = re.compile(r"Checkpoint uploads during training: (\d+) snapshots \(([\d.]+) ms each on the training "
                      r"thread, ([\d.]+) MB, medians\), (\d+) uploaded")


def _summary(timed: Timed) -> Dict[str, float]:
    """What the run reported in its train.log: snapshots, their median copy time and size, uploads."""
    [log] = list(timed.folder.glob("**/train.log"))
    found = _SUMMARY.search(log.read_text())
    if not found:
        raise RuntimeError(f"{log}: no checkpoint upload summary")
    return {"snapshots": int(found.group(1)), "copy_ms": float(found.group(2)), "MB": float(found.group(3)),
            "uploaded": int(found.group(4))}


def upload_cpu_ms(runs: TrackedRuns, mb: float, repeats: int) -> float:
    """CPU milliseconds this thread spends uploading `mb` MB as a snapshot does (a file through the run's record to
    the server, which proxies it to S3): the thread's own CPU time, which a busy machine does not inflate as it
    inflates wall-clock time. Median of `repeats`."""
    client = runs.client
    run = client.create_run(client.create_experiment(runs.next_name("upload-cpu")))
    record = RunRecord(client, run.info.run_id)
    path = runs.workdir / "upload-cpu" / "last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(int(mb * 1e6)))  # incompressible, as a checkpoint is nearly
    record.log_file(path, "training-output/weights")  # the connection and the server's first write, untimed
    spent = []
    for _ in range(repeats):
        started = time.thread_time()
        record.log_file(path, "training-output/weights")
        spent.append(time.thread_time() - started)
    return round(1000 * median(spent), 1)


def checkpoint_uploads(runs: TrackedRuns, settings: Settings, epochs: int, pairs: int) -> Dict[str, Any]:
    """11: checkpoint_every_epochs=0 (A) against 1 (B), interleaved; per-epoch cost, end of run, the copy's share.
    Both log the final model, so B's snapshots also log last.pt and best.pt as logged models."""
    overrides = [*settings.overrides(runs.data, 3, epochs), "mlflow.checkpoint_every_minutes=0"]
    off: List[Timed] = []
    on: List[Timed] = []
    server_cpu: Dict[int, List[float]] = {0: [], 1: []}

    def run(every: int, into: List[Timed]) -> float:
        experiment, timed = runs.tracked([*overrides, f"mlflow.checkpoint_every_epochs={every}"],
                                         f"checkpoints-{every}")
        if len(timed.epoch_ends) != epochs:
            raise RuntimeError(f"{timed.folder}: saw {len(timed.epoch_ends)} of {epochs} epochs end")
        into.append(timed)
        server_cpu[every].append(runs.server_cpu_s[experiment])
        return timed.seconds

    whole = interleaved(pairs, lambda: run(0, off), lambda: run(1, on))
    per_epoch_a, per_epoch_b = [t.per_epoch_s for t in off], [t.per_epoch_s for t in on]
    reported = [_summary(t) for t in on]
    end_a, end_b = median(t.end_s for t in off), median(t.end_s for t in on)
    return {
        "epochs": epochs, "pairs": pairs,
        "per_epoch_ms_a": round(1000 * median(per_epoch_a), 1), "per_epoch_ms_b": round(1000 * median(per_epoch_b), 1),
        "per_epoch_cost_ms": round(1000 * (median(per_epoch_b) - median(per_epoch_a)), 1),
        "per_epoch_ratio": round(median(per_epoch_b) / median(per_epoch_a), 4),
        "end_cost_s": round(end_b - end_a, 3),
        "copy_ms_per_snapshot": median(r["copy_ms"] for r in reported),
        "MB_per_snapshot": median(r["MB"] for r in reported),
        "uploaded_of_snapshots": [[r["uploaded"], r["snapshots"]] for r in reported],
        # The tracking server's CPU per epoch: it proxies every upload to S3, and here shares the cores with the
        # training (as does the S3 server, not counted), as in no cluster.
        "server_cpu_per_epoch_ms": round(1000 * (median(server_cpu[1]) - median(server_cpu[0])) / epochs, 1),
        # The training process's side of one snapshot's upload (the background thread's requests), measured alone.
        "client_cpu_ms_per_snapshot": upload_cpu_ms(runs, median(r["MB"] for r in reported), pairs),
        "pair_ratios_per_epoch": [round(b / a, 3) for a, b in zip(per_epoch_a, per_epoch_b)],
        "whole_run": whole.summary(),
        "per_epoch_ms_a_all": [round(1000 * x, 1) for x in per_epoch_a],
        "per_epoch_ms_b_all": [round(1000 * x, 1) for x in per_epoch_b],
        "reported": reported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoints", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each training")
    parser.add_argument("--imgsz", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(imgsz=args.imgsz, batch=args.batch)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-checkpoints-") as tmp:
        workdir = Path(tmp)
        data = datasets(workdir / "data", image_size=settings.imgsz)
        with servers(workdir / "servers") as server:
            runs = TrackedRuns(server, workdir / "runs", data)
            # Paid before anything is timed: the label cache, and the server's first run (schema, first experiment).
            runs.untracked(settings.overrides(data, 3, 1), "warmup")
            runs.tracked([*settings.overrides(data, 3, 1), "mlflow.log_model=false"], "warmup")
            figure = checkpoint_uploads(runs, settings, args.epochs, args.pairs)
    results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "settings": {"imgsz": settings.imgsz, "batch": settings.batch, "model": "yolov5n", "device": "cpu",
                            "images": "32 training + 8 validation (3 classes)"},
               "checkpoint_uploads": figure, "total_minutes": round((time.monotonic() - started) / 60, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoints.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"Measured {results['when']} on {results['machine']['cpus']} CPUs; {args.pairs} interleaved A/B pairs, "
          f"medians; {results['total_minutes']} minutes in all.\n")
    print("\n".join([*TABLE_HEADER, *checkpoint_rows(results)]))


if __name__ == "__main__":
    main()
