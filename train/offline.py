"""Every network access YOLOv5 7.0.14 (and the ultralytics package it imports) would make, switched off.

Must run before `yolov5` is first imported: several switches are read at import time.
Each is a default (setdefault), so a user may still set any of them in the environment.
See README "Offline switches" for what each one stops.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from train import quiet

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _install_fonts(config_dir: Path) -> None:
    # check_dataset() downloads Arial.ttf into the config dir when it is missing, even with --noplots.
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        if not (config_dir / name).is_file():
            shutil.copyfile(dejavu, config_dir / name)


# MLflow 3 sends usage telemetry from every process that tracks (a thread that looks up
# config.mlflow-telemetry.io): a network access at run time, which offline it only delays, and never asked for.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def no_telemetry() -> None:
    """Before the first MLflow call of any command (train.exits runs it first): MLflow reads it at each event."""
    for key, value in NO_TELEMETRY.items():
        os.environ.setdefault(key, value)


def apply(cache_dir: Path) -> None:
    config_dir = cache_dir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    switches = {
        "YOLO_OFFLINE": "1",  # ultralytics: no is_online() DNS probe
        "YOLO_CONFIG_DIR": str(config_dir),  # ultralytics: settings.json here, not ~/.config
        "YOLOV5_CONFIG_DIR": str(config_dir),  # yolov5: fonts and settings here
        "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1",  # no pip installs at run time
        "YOLO_AUTOINSTALL": "false",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(config_dir / "matplotlib"),
        # torch >= 2.6 loads weights_only by default; YOLOv5 checkpoints pickle whole models.
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    }
    for key, value in switches.items():
        os.environ.setdefault(key, value)
    no_telemetry()
    _install_fonts(config_dir)
    quiet.silence()  # the console's known noise (pkg_resources, ads, ...) filtered, before yolov5 is imported
