"""Wrapper overhead (2): `python -m train` with tracking off against plain `python -m yolov5.train`, start to exit.

Plain YOLOv5 gets exactly what ours passes it: the data and hyp yamls our run wrote, the same model
yaml, optimizer, seed and sizes, and the same offline switches in its environment (without them it
reaches for the network and fails here).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import yaml

from bench.harness import Datasets, Pairs, client_env, interleaved, run_timed, train_argv
from bench.tracking import Settings
from train import offline
from train.yolo import model_yaml


def _yolov5_argv(run_dir: Path, out: Path) -> List[str]:
    opt = yaml.safe_load((run_dir / "yolov5" / "opt.yaml").read_text())
    return [sys.executable, "-m", "yolov5.train", "--data", str(run_dir / "data.yaml"),
            "--hyp", str(run_dir / "hyp.yaml"), "--cfg", str(model_yaml("yolov5n.yaml")), "--weights", "",
            "--epochs", str(opt["epochs"]), "--batch-size", str(opt["batch_size"]), "--imgsz", str(opt["imgsz"]),
            "--device", "cpu", "--workers", "0", "--optimizer", opt["optimizer"], "--seed", str(opt["seed"]),
            "--patience", str(opt["patience"]), "--noplots", "--project", str(out), "--name", "yolov5", "--exist-ok"]


def wrapper_overhead(data: Datasets, settings: Settings, workdir: Path, epochs: int, pairs: int) -> Pairs:
    """Plain YOLOv5 (A) against `python -m train mlflow.enabled=false` (B)."""
    overrides = [*settings.overrides(data, 3, epochs), "mlflow.enabled=false"]
    offline.apply(data.cache_dir)  # the switches `python -m train` sets for itself, in both environments
    env = client_env(YOLOV5_MLFLOW_CACHE=str(data.cache_dir))
    first = workdir / "reference"
    run_timed(train_argv(*overrides, f"hydra.run.dir={first}"), workdir, env)  # writes the yamls plain YOLOv5 reads
    count = iter(range(10**6))

    def plain() -> float:
        out = workdir / f"plain-{next(count)}"
        return run_timed(_yolov5_argv(first, out), out, env).seconds

    def ours() -> float:
        out = workdir / f"ours-{next(count)}"
        return run_timed(train_argv(*overrides, f"hydra.run.dir={out}"), out, env).seconds

    return interleaved(pairs, plain, ours)
