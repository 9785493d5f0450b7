"""YOLOv5's own train.py, driven in-process from the config, with our event hooks attached.

In-process rather than as a subprocess, so hooks see every epoch as it ends. `yolov5.train.main`
is called with a fresh Callbacks object each time: `yolov5.train.run` would reuse a module-level
one and carry one run's loggers into the next.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml


def yolov5_package_dir() -> Path:
    # Found without importing: `import yolov5` pulls in ultralytics, which the offline switches must precede.
    return Path(importlib.util.find_spec("yolov5").submodule_search_locations[0])  # type: ignore[union-attr,index]


def model_yaml(cfg: str) -> Path:
    """An absolute path as given, else a yaml shipped in yolov5/models/."""
    path = Path(cfg)
    return path if path.is_absolute() else yolov5_package_dir() / "models" / cfg


def resolve_device(device: str) -> str:
    import torch

    if device == "":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device if device in ("cpu", "mps") or device.startswith("cuda") else f"cuda:{device}"


def device_for_trial(trial: int, gpu_count: int) -> str:
    """Parallel sweep trials each on a GPU of their own (round robin); '' (YOLOv5's auto) without GPUs."""
    return str(trial % gpu_count) if gpu_count else ""


def _default_opt() -> argparse.Namespace:
    from yolov5 import train as yolov5_train

    argv, sys.argv = sys.argv, sys.argv[:1]  # parse_opt reads the host's argv: Hydra's overrides are not its flags
    try:
        return yolov5_train.parse_opt(known=True)
    finally:
        sys.argv = argv


def build_opt(config: Mapping[str, Any], data_yaml: Path, out_dir: Path, weights: str = "") -> argparse.Namespace:
    """train.py's options from the resolved config; YOLOv5 writes its run dir to out_dir/yolov5.

    weights: the local checkpoint model.weights resolved to (train.model.weights), '' from scratch: an absolute
    path, so YOLOv5 never looks the name up on the Hugging Face hub or GitHub."""
    t, m = config["train"], config["model"]
    hyp_yaml = out_dir / "hyp.yaml"
    hyp_yaml.write_text(yaml.safe_dump(dict(config["hyp"]), sort_keys=False))
    opt = _default_opt()
    overrides: Dict[str, Any] = {
        "weights": weights, "cfg": str(model_yaml(m["cfg"])), "data": str(data_yaml), "hyp": str(hyp_yaml),
        "epochs": t["epochs"], "batch_size": t["batch"], "imgsz": t["imgsz"], "device": t["device"],
        "workers": t["workers"], "seed": t["seed"], "optimizer": t["optimizer"], "cos_lr": t["cos_lr"],
        "label_smoothing": t["label_smoothing"], "patience": t["patience"], "cache": t["cache"], "rect": t["rect"],
        "single_cls": t["single_cls"], "noval": t["noval"], "noplots": t["noplots"],
        "project": str(out_dir), "name": "yolov5", "exist_ok": True,
    }
    for key, value in overrides.items():
        setattr(opt, key, value)
    return opt


def save_dir(out_dir: Path) -> Path:
    return out_dir / "yolov5"


def checkpoint_epoch(checkpoint: Path) -> int:
    """The last epoch a YOLOv5 checkpoint completed."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])


def best_epoch(results_csv: Path) -> int:
    """The epoch whose weights best.pt holds: YOLOv5 saves it whenever an epoch's fitness reaches the best so
    far, ties included, so the last of equal epochs. 0 when results.csv has no rows yet."""
    import numpy as np
    from yolov5.utils.metrics import fitness

    header, *rows = results_csv.read_text().splitlines()
    names = [cell.strip() for cell in header.split(",")]
    columns = [names.index(f"metrics/{name}") for name in ("precision", "recall", "mAP_0.5", "mAP_0.5:0.95")]
    table = np.array([[float(row.split(",")[i]) for i in columns] for row in rows]).reshape(-1, 4)
    if not len(table):
        return 0
    scores = fitness(table)
    return int(rows[len(scores) - 1 - int(np.argmax(scores[::-1]))].split(",")[0])


def keep_rows_through(results_csv: Path, last_epoch: int) -> None:
    """Rows past the checkpoint (an epoch recorded but never saved, or uploaded before its checkpoint) would be
    trained and written again: dropped."""
    if not results_csv.is_file():
        return
    header, *rows = results_csv.read_text().splitlines(keepends=True)
    results_csv.write_text(header + "".join(r for r in rows if r.strip() and int(r.split(",")[0]) <= last_epoch))


def last_row_epoch(results_csv: Path) -> Optional[int]:
    """The epoch of results.csv's last row; None without rows."""
    if not results_csv.is_file():
        return None
    rows = [r for r in results_csv.read_text().splitlines()[1:] if r.strip()]
    return int(rows[-1].split(",")[0]) if rows else None


def continue_from(opt: argparse.Namespace, checkpoint: Path, last_epoch: int) -> int:
    """Make `opt` resume from `checkpoint` (in save_dir/weights, at `last_epoch`) the way YOLOv5's --resume does;
    the next epoch.

    YOLOv5 reads the options of a resumed run from save_dir/opt.yaml, so ours, with this machine's paths,
    are written there.
    """
    save = Path(opt.project) / opt.name
    opt.save_dir = str(save)
    (save / "opt.yaml").write_text(yaml.safe_dump(vars(opt), sort_keys=False))
    opt.resume = str(checkpoint)
    return last_epoch + 1


def train(opt: argparse.Namespace, *hooks) -> None:
    """YOLOv5's training; each of `hooks` registers its callbacks (before YOLOv5 adds its own loggers)."""
    from yolov5 import train as yolov5_train
    from yolov5.utils.callbacks import Callbacks

    from train.quiet import undo_yolov5_global_warning_settings

    # Importing YOLOv5 hid every UserWarning of the process; train.quiet filters its known noise one by one instead.
    undo_yolov5_global_warning_settings()
    callbacks = Callbacks()
    for hook in hooks:
        hook.register(callbacks)
    yolov5_train.main(opt, callbacks=callbacks)
