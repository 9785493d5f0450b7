"""`python -m bench` (`make bench`): every CPU benchmark, written to bench/results/results.{json,md}.

Settings are small (about 24 minutes on a 2-core machine, most of it the five pairs of 100-epoch runs);
every figure is a ratio (or a latency) measured side by side, never a lone absolute time. The GPU benchmark is
`python -m bench.gpu` (it skips without CUDA).
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
from bench.harness import datasets, servers
from bench.report import markdown
from bench.tracking import Settings, TrackedRuns, live_latency, overhead, tails
from bench.wrapper import wrapper_overhead

RESULTS = Path(__file__).resolve().parent / "results"


def run_all(workdir: Path, pairs: int, epochs: int, scaling_epochs: tuple, settings: Settings) -> Dict[str, Any]:
    started = time.monotonic()
    data = datasets(workdir / "data", image_size=settings.imgsz)
    results: Dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"pairs": pairs, "epochs": epochs, "imgsz": settings.imgsz, "batch": settings.batch,
                     "images": "64 + 8 (3 classes); 128 (80 classes)", "model": "yolov5n", "device": "cpu"},
    }
    with servers(workdir / "servers") as server:
        runs = TrackedRuns(server, workdir / "runs", data)
        runs.untracked(settings.overrides(data, 3, 1), "warmup")  # dataset label caches, the SQLite schema
        runs.tracked(settings.overrides(data, 3, 1), "warmup")

        results["tracking_overhead"] = overhead(runs, settings, epochs, 3, pairs).summary()
        results["wrapper_overhead"] = wrapper_overhead(data, settings, workdir / "wrapper", 10, pairs).summary()
        results["live_metric_latency"] = live_latency(runs, settings, epochs)

        figures = tails(runs, f"overhead-e{epochs}-nc3")
        throughput = direct_throughput_mb_s(server, workdir / "payloads")
        tail = median([f["tail_s"] for f in figures])
        uploaded = median([f["bytes"] for f in figures])
        budget = 1.2 * uploaded / (throughput * 1024 * 1024) + 2
        results["end_of_run_tail"] = {"median_tail_s": round(tail, 3), "median_bytes": int(uploaded),
                                      "direct_boto3_MB_per_s": round(throughput, 1), "goal_s": round(budget, 3),
                                      "tails_s": [round(f["tail_s"], 3) for f in figures]}

        results["artifact_path"] = artifact_path(server, workdir / "payloads", pairs=pairs)

        scaling = {f"epochs={epochs}, nc=3": results["tracking_overhead"]}
        for n in scaling_epochs:
            scaling[f"epochs={n}, nc=3"] = overhead(runs, settings, n, 3, pairs).summary()
        # 80 classes add 160 per-class series; coco128's layout validates on all 128 images, so 10 epochs.
        scaling["epochs=10, nc=80"] = overhead(runs, settings, 10, 80, pairs).summary()
        results["scaling"] = scaling
    results["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs per figure (at least 5 to report)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the tracking-overhead training")
    parser.add_argument("--scaling-epochs", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--imgsz", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-") as tmp:
        results = run_all(Path(tmp), args.pairs, args.epochs, tuple(args.scaling_epochs),
                          Settings(imgsz=args.imgsz, batch=args.batch))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
