"""`python -m bench.checkpoints`: what uploading the resume checkpoint during training costs, figure 11 (also part
of `python -m bench`).

Interleaved pairs of the same tracked training to the same server, `mlflow.checkpoint_every_epochs=0` (A: the
checkpoint reaches the server only at the end) against `=1` (B, the default: a snapshot at every epoch's end,
uploaded in the background, the newest only). Each run is watched from outside (bench.harness.Timed): its time per
epoch is from the first epoch's end to the last's, divided by the epochs between, so the start and the end of the
run are left out; the figure is the difference and the ratio of the two sides' medians. The end of a run (last
epoch to exit) is reported too: B waits there for an upload still in flight. The training thread's own share, the
copy of the files into the snapshot, is what each B run reports in its train.log (its median per snapshot); the
tracking server's CPU per epoch (it proxies every upload to S3) is the difference of the two sides' medians. Here the
server and the S3 server share the machine's cores with the training, as in no cluster. No model is logged (the same on both sides, and seconds of each run's end).
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

RESULTS = Path(__file__).resolve().parent / "results"
_COPY_MS = re.compile(r"Checkpoint uploads during training: (\d+) snapshots \(([\d.]+) ms each on the training thread")


def _per_epoch_s(timed: Timed) -> float:
    ends = timed.epoch_ends
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def _copy_ms(timed: Timed) -> float:
    """The median snapshot copy the run reported in its train.log."""
    [log] = list(timed.folder.glob("**/train.log"))
    found = _COPY_MS.search(log.read_text())
    if not found:
        raise RuntimeError(f"{log}: no checkpoint upload summary")
    return float(found.group(2))


def checkpoint_uploads(runs: TrackedRuns, settings: Settings, epochs: int, pairs: int) -> Dict[str, Any]:
    """11: checkpoint_every_epochs=0 (A) against 1 (B), interleaved; per-epoch cost, end of run, the copy's share."""
    overrides = [*settings.overrides(runs.data, 3, epochs), "mlflow.log_model=false"]
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
    per_epoch_a, per_epoch_b = [_per_epoch_s(t) for t in off], [_per_epoch_s(t) for t in on]
    copies = [_copy_ms(t) for t in on]
    end_a, end_b = median(t.end_s for t in off), median(t.end_s for t in on)
    return {
        "epochs": epochs, "pairs": pairs,
        "per_epoch_ms_a": round(1000 * median(per_epoch_a), 1), "per_epoch_ms_b": round(1000 * median(per_epoch_b), 1),
        "per_epoch_cost_ms": round(1000 * (median(per_epoch_b) - median(per_epoch_a)), 1),
        "per_epoch_ratio": round(median(per_epoch_b) / median(per_epoch_a), 4),
        "end_cost_s": round(end_b - end_a, 3),
        "copy_ms_per_snapshot": round(median(copies), 1),
        # The tracking server's CPU (it proxies the uploads to S3; here it shares the cores with the training).
        "server_cpu_per_epoch_ms": round(1000 * (median(server_cpu[1]) - median(server_cpu[0])) / epochs, 1),
        "whole_run": whole.summary(),
        "per_epoch_ms_a_all": [round(1000 * x, 1) for x in per_epoch_a],
        "per_epoch_ms_b_all": [round(1000 * x, 1) for x in per_epoch_b],
        "copy_ms_all": copies,
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
