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


def _yolov5_argv(run_dir: Path, epochs: int, out: Path) -> List[str]:
    opt = yaml.safe_load((run_dir / "yolov5" / "opt.yaml").read_text())
    return [sys.executable, "-m", "yolov5.train", "--data", str(run_dir / "data.yaml"),
            "--hyp", str(run_dir / "hyp.yaml"), "--cfg", str(model_yaml("yolov5n.yaml")), "--weights", "",
            "--epochs", str(epochs), "--batch-size", str(opt["batch_size"]), "--imgsz", str(opt["imgsz"]),
            "--device", "cpu", "--workers", "0", "--optimizer", opt["optimizer"], "--seed", str(opt["seed"]),
            "--patience", str(opt["patience"]), "--noplots", "--project", str(out), "--name", "yolov5", "--exist-ok"]


def wrapper_overhead(data: Datasets, settings: Settings, reference: Path, workdir: Path, epochs: int,
                     pairs: int) -> Pairs:
    """Plain YOLOv5 (A) against `python -m train mlflow.enabled=false` (B).

    reference: the folder of an earlier `python -m train` run of the same settings (any number of epochs),
    whose data and hyp yamls plain YOLOv5 is given.
    """
    [run_dir] = {path.parent.parent for path in reference.glob("**/yolov5/opt.yaml")}
    overrides = [*settings.overrides(data, 3, epochs), "mlflow.enabled=false"]
    offline.apply(data.cache_dir)  # the switches `python -m train` sets for itself, in both environments
    env = client_env(YOLOV5_MLFLOW_CACHE=str(data.cache_dir))
    count = iter(range(10**6))

    def plain() -> float:
        out = workdir / f"plain-{next(count)}"
        return run_timed(_yolov5_argv(run_dir, epochs, out), out, env).seconds

    def ours() -> float:
        out = workdir / f"ours-{next(count)}"
        return run_timed(train_argv(*overrides, f"hydra.run.dir={out}"), out, env).seconds

    return interleaved(pairs, plain, ours)
