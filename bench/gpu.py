"""`python -m bench.gpu`: images per second of `python -m train` against plain YOLOv5 on one CUDA GPU (7).

yolov5s, 640 px, batch 64, AMP (YOLOv5's default on CUDA), synthetic images cached in RAM and no
mosaic, so the GPU and not JPEG decoding sets the pace. Throughput is read from each process's
own results.csv as its rows appear (the first epoch, with its warm-up, is left out), with the GPU's
utilisation sampled meanwhile. Then each of our runs' records must hold MLflow's per-GPU system metrics
(system/gpu_<i>_utilization_percentage, ..._memory_usage_percentage, ..._memory_usage_megabytes,
..._power_usage_watts, ..._power_usage_percentage for every NVML device; system/<node>/gpu_<i>_... on Kubernetes):
they are reported beside the throughput, and the command exits 1 if one is missing. Without CUDA it says so and
exits 0. Sized for under 8 minutes on one H100: --pairs and --epochs trade precision for time.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List

from bench.harness import client_env, interleaved, run_timed, servers, train_argv
from train import offline
from train.data.synthetic import SyntheticSpec, generate
from train.yolo import model_yaml

RESULTS = Path(__file__).resolve().parent / "results"
# What MLflow's GPU monitor logs per NVML device (mlflow/system_metrics/metrics/gpu_monitor.py, MLflow 3.17.2).
GPU_SERIES = ("utilization_percentage", "memory_usage_percentage", "memory_usage_megabytes", "power_usage_watts",
              "power_usage_percentage")
_GPU_KEY = re.compile(r"^system/(?:(?P<node>[^/]+)/)?gpu_(?P<index>\d+)_(?P<series>" + "|".join(GPU_SERIES) + r")$")


class GpuSampler:
    """GPU utilisation (%) every half second, from NVML."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self._nvml = pynvml
        self.samples: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def images_per_second(argv: List[str], cwd: Path, env: Dict[str, str], images: int) -> Dict[str, float]:
    """Run `argv` in `cwd`; epochs 2.. as timed by their results.csv rows: images per second, and GPU %."""
    with GpuSampler() as gpu:
        measured = run_timed(argv, cwd, env).epoch_ends[1:]
    busy = gpu.samples[len(gpu.samples) // 4:]  # past start-up
    return {"images_per_s": images * (len(measured) - 1) / (measured[-1] - measured[0]),
            "gpu_util_median_pct": statistics.median(busy) if busy else 0.0}


def gpu_series(keys: List[str], gpus: int) -> Dict[str, Any]:
    """Which of MLflow's per-GPU series a run's metric keys hold, for NVML devices 0..gpus-1."""
    found = {(int(m["index"]), m["series"]): key for key in keys if (m := _GPU_KEY.match(key))}
    expected = [(i, series) for i in range(gpus) for series in GPU_SERIES]
    return {"keys": [found[e] for e in expected if e in found],
            "missing": [f"gpu_{i}_{series}" for i, series in expected if (i, series) not in found]}


def check_gpu_series(client, run_ids: List[str], gpus: int) -> Dict[str, Any]:
    """Each run's per-GPU system metrics: their points and median values, and what is missing."""
    runs = []
    for run_id in run_ids:
        held = gpu_series(list(client.get_run(run_id).data.metrics), gpus)
        values = {key: [m.value for m in client.get_metric_history(run_id, key)] for key in held["keys"]}
        runs.append({"run_id": run_id, "missing": held["missing"],
                     "points": {key: len(v) for key, v in values.items()},
                     "median": {key: round(statistics.median(v), 1) for key, v in values.items() if v}})
    return {"gpus": gpus, "series": list(GPU_SERIES), "runs": runs, "complete": all(not r["missing"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench.gpu: skipped, no CUDA device")
        return
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-gpu-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        root = generate(SyntheticSpec(train_images=args.images, val_images=64, image_size=640, seed=0), cache)
        offline.apply(cache)
        env = client_env(YOLOV5_MLFLOW_CACHE=str(cache))
        settings = ["model=yolov5s", "train.imgsz=640", "train.batch=64", "train.device=0", "train.workers=8",
                    "train.cache=ram", f"train.epochs={args.epochs}", f"data.root={root}"]
        with servers(work / "servers") as server:
            tracked_env = {**env, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_EXPERIMENT_NAME": "bench-gpu"}
            # Our first run writes the data and hyp yamls that plain YOLOv5 then gets too.
            reference = work / "reference"
            subprocess.run(train_argv(*settings, "train.epochs=1", f"hydra.run.dir={reference}"), cwd=work,
                           env=tracked_env, check=True, capture_output=True)
            plain = [sys.executable, "-m", "yolov5.train", "--data", str(reference / "data.yaml"),
                     "--hyp", str(reference / "hyp.yaml"), "--cfg", str(model_yaml("yolov5s.yaml")), "--weights", "",
                     "--imgsz", "640", "--batch-size", "64", "--device", "0", "--workers", "8", "--cache", "ram",
                     "--epochs", str(args.epochs), "--optimizer", "AdamW", "--exist-ok"]
            runs: Dict[str, List[Dict[str, float]]] = {"plain": [], "ours": []}
            count = iter(range(10**6))

            def run_plain() -> float:
                folder = work / f"plain-{next(count)}"
                runs["plain"].append(images_per_second(plain + ["--project", str(folder), "--name", "yolov5"],
                                                       folder, env, args.images))
                return 1 / runs["plain"][-1]["images_per_s"]

            def run_ours() -> float:
                folder = work / f"ours-{next(count)}"
                runs["ours"].append(images_per_second(train_argv(*settings, f"hydra.run.dir={folder / 'run'}"),
                                                      folder, tracked_env, args.images))
                return 1 / runs["ours"][-1]["images_per_s"]

            interleaved(args.pairs, run_plain, run_ours)
            import pynvml

            pynvml.nvmlInit()
            client = server.client()
            experiment = client.get_experiment_by_name("bench-gpu")
            ours = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])[1:]
            system_metrics = check_gpu_series(client, [r.info.run_id for r in ours], pynvml.nvmlDeviceGetCount())
    plain_ips = statistics.median(r["images_per_s"] for r in runs["plain"])
    ours_ips = statistics.median(r["images_per_s"] for r in runs["ours"])
    result = {"device": torch.cuda.get_device_name(0), "pairs": args.pairs, "epochs": args.epochs,
              "images": args.images, "plain_images_per_s": round(plain_ips, 1), "ours_images_per_s": round(ours_ips, 1),
              "ratio": round(ours_ips / plain_ips, 4),
              "gpu_util_median_pct": {k: statistics.median(r["gpu_util_median_pct"] for r in v)
                                      for k, v in runs.items()},
              "system_metrics": system_metrics}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"goal ratio >= 0.98: {'met' if result['ratio'] >= 0.98 else 'MISSED'}")
    missing = {r["run_id"]: r["missing"] for r in system_metrics["runs"] if r["missing"]}
    print(f"per-GPU system metrics in each of our {len(system_metrics['runs'])} runs: "
          + ("all there" if system_metrics["complete"] and system_metrics["runs"] else f"MISSING {missing}"))
    if not (system_metrics["complete"] and system_metrics["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
