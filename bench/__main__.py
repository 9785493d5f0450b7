"""`python -m bench` (`make bench`): every CPU benchmark, written to bench/results/results.{json,md}.

Settings are small (about 50 minutes on a 2-core machine, most of it the five pairs of 100-epoch runs that
figures 1, 4 and 6 share, figure 11's and 13's pairs, and the 1 GB dataset that figure 9 fetches from S3 six
times); every figure is a ratio
(or a latency) measured side by side, never a lone absolute time. The GPU benchmark is `python -m bench.gpu`
(it skips without CUDA); figures 9 and 10 alone are `python -m bench.fetch`, figure 11 `python -m bench.checkpoints`,
figure 12 (tracking's stages; before and after a change) `python -m bench.breakdown --before <git ref>`, and
`python -m bench --tracking-only` figures 1, 3, 4, 6 and 13.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any, Dict

from bench.artifacts import artifact_path, direct_throughput_mb_s
from bench.breakdown import measure as stages
from bench.checkpoints import checkpoint_uploads
from bench.fetch import dataset_digest, dataset_fetch
from bench.harness import client_env, datasets, servers
from bench.report import markdown
from bench.server import round_trip
from bench.tracking import Settings, TrackedRuns, default_config, live_latency, scaling, tails, trainings
from bench.wrapper import wrapper_overhead

RESULTS = Path(__file__).resolve().parent / "results"
WRAPPER_EPOCHS = 5
BREAKDOWN_EPOCHS = 10  # figure 12: stages of a tracked run (bench/breakdown.py)
CHECKPOINT_EPOCHS = 20  # figure 11: per-epoch cost, so the runs' start and end are left out of it
DEFAULT_CONFIG_EPOCHS = 10  # figure 13: the recipe's defaults take about 3 s an epoch here
DATASET_REPEATS = 3  # figures 9 and 10: a 1 GB fetch takes about a minute a side, so fewer than --pairs
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # MLflow's "View run" lines, per run


def run_all(workdir: Path, pairs: int, epochs: int, tiers: tuple, settings: Settings,
            fetch_mb: int = 1000, tracking_only: bool = False) -> Dict[str, Any]:
    started = time.monotonic()
    data = datasets(workdir / "data", image_size=settings.imgsz)
    results: Dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"pairs": pairs, "epochs": epochs, "tiers": list(tiers), "wrapper_epochs": WRAPPER_EPOCHS,
                     "imgsz": settings.imgsz,
                     "batch": settings.batch, "images": "32 training + 8 validation (3 classes); 128 in coco128's "
                     "layout, validated on all of them (80 classes)", "model": "yolov5n", "device": "cpu",
                     "fetch_MB": fetch_mb, "dataset_repeats": DATASET_REPEATS},
    }
    with servers(workdir / "servers") as server:
        runs = TrackedRuns(server, workdir / "runs", data)
        # Paid before anything is timed: each layout's label cache (the first run of a dataset writes it), and
        # the server's first run (SQLite schema, first experiment), which the latency figure does not mind.
        runs.untracked(settings.overrides(data, 80, 1), "warmup")
        reference = runs.untracked(settings.overrides(data, 3, 1), "warmup")
        results["live_metric_latency"] = live_latency(runs, settings, 10)

        family = trainings(runs, settings, max(tiers), 3, pairs)
        results["tracking_overhead"] = family.at(epochs).summary()
        results["scaling"] = scaling(runs, family, tiers)
        figures = tails(runs, family)
        throughput = direct_throughput_mb_s(server, workdir / "payloads")
        tail = median([f["tail_s"] for f in figures])
        uploaded = median([f["bytes"] for f in figures])
        budget = 1.2 * uploaded / (throughput * 1024 * 1024) + 2
        results["end_of_run_tail"] = {"median_tail_s": round(tail, 3), "median_bytes": int(uploaded),
                                      "direct_boto3_MB_per_s": round(throughput, 1), "goal_s": round(budget, 3),
                                      "tails_s": [round(f["tail_s"], 3) for f in figures]}
        runs.untracked(["train.epochs=1"], "warmup")  # the defaults' dataset, generated once, and its label cache
        results["default_config"] = default_config(runs, DEFAULT_CONFIG_EPOCHS, pairs)
        if tracking_only:
            results["total_minutes"] = round((time.monotonic() - started) / 60, 1)
            return results
        # 80 classes add 160 per-class series (YOLOv5 logs each class's mAP and mAP_50) to the 19 of 3 classes;
        # 3 epochs, since coco128's layout validates on all 128 images every epoch.
        results["series"] = {"nc=80, epochs=3": trainings(runs, settings, 3, 80, pairs).at(3).summary()}

        results["wrapper_overhead"] = wrapper_overhead(data, settings, reference.folder, workdir / "wrapper",
                                                       WRAPPER_EPOCHS, pairs).summary()
        results["artifact_path"] = artifact_path(server, workdir / "payloads", pairs=pairs)
        results["server_round_trip"] = round_trip(server, workdir / "four-workers", pairs)
        results["checkpoint_uploads"] = checkpoint_uploads(runs, settings, CHECKPOINT_EPOCHS, pairs)
        results["breakdown"] = {"after": stages(Path(__file__).resolve().parents[1],
                                                settings.overrides(data, 3, BREAKDOWN_EPOCHS), pairs,
                                                client_env(MLFLOW_TRACKING_URI=server.uri,
                                                           MLFLOW_EXPERIMENT_NAME="bench-breakdown",
                                                           YOLOV5_MLFLOW_CACHE=str(data.cache_dir)),
                                                workdir / "breakdown")}
    # After the servers stop: figure 9 starts an S3 server of its own, which holds the dataset in memory.
    results["dataset_fetch"] = dataset_fetch(workdir / "fetch", fetch_mb, DATASET_REPEATS)
    results["dataset_digest"] = dataset_digest(workdir / "digest", repeats=DATASET_REPEATS)
    results["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs per figure (at least 5 to report)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the tracking-overhead figure (1)")
    parser.add_argument("--tiers", type=int, nargs="+", default=[10, 30, 100],
                        help="epochs of the scaling figure (6); the runs train the largest")
    parser.add_argument("--imgsz", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--fetch-mb", type=int, default=1000, help="size of figure 9's dataset, MiB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tracking-only", action="store_true",
                        help="figures 1, 3, 4, 6 (epochs) and 13 only, about 28 minutes; written to tracking.{json,md}")
    args = parser.parse_args()
    if args.epochs > max(args.tiers):
        parser.error(f"--epochs {args.epochs} is more than the runs train (the largest of --tiers)")
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-") as tmp:
        results = run_all(Path(tmp), args.pairs, args.epochs, tuple(sorted(args.tiers)),
                          Settings(imgsz=args.imgsz, batch=args.batch), args.fetch_mb, args.tracking_only)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tracking" if args.tracking_only else "results"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
