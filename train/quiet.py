"""The console lines that are noise in this recipe, filtered one by one, so that what is left is worth reading.

Each filter matches one known message (a precise regex) from one known place (the warning's module, the
logger's name); everything else from the same module or logger still shows. `silence()` runs from
`train.offline.apply`, before YOLOv5, ultralytics or MLflow are imported; it may run more than once.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Pattern

# An ANSI escape (YOLOv5's colorstr): log messages are matched on their plain text.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

# (action, message regex, category, module regex): the warnings filters, each with why it is noise here.
WARNINGS = (
    # setuptools' "pkg_resources is deprecated" on YOLOv5's `import pkg_resources`: setuptools is pinned <81 for
    # exactly that import (requirements.txt); nothing for a user of this recipe to do.
    ("ignore", r"pkg_resources is deprecated as an API", UserWarning, r"yolov5\."),
    # torch's deprecation of torch.cuda.amp.GradScaler(...), called once per training by YOLOv5 7.0.14's train.py
    # (the pinned package's code, not ours): it still works the same.
    ("ignore", r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", FutureWarning, r"yolov5\.train\Z"),
    # The same for torch.cuda.amp.autocast(...), which YOLOv5's train.py enters at every batch.
    ("ignore", r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", FutureWarning, r"yolov5\."),
    # torch's notice that TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD makes YOLOv5's torch.load calls unpickle whole objects:
    # train.offline sets it on purpose (YOLOv5 checkpoints pickle the model). Our own torch.load calls still warn.
    ("ignore", r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", UserWarning, r"yolov5\."),
    # torch's DataLoader on a machine without GPU: YOLOv5 asks for pinned memory, which only speeds up copies to a
    # GPU; training on the CPU is the same without it.
    ("ignore", r"'pin_memory' argument is set as true but no accelerator is found", UserWarning,
     r"torch\.utils\.data\.dataloader\Z"),
)

# (logger name, message regex): log records dropped, each with why it is noise here.
LOG_RECORDS = (
    # YOLOv5's advertisements for trackers we do not use: this recipe tracks to MLflow (and keeps them uninstalled).
    ("yolov5", r"^ClearML: run 'pip install clearml'"),
    ("yolov5", r"^Comet: run 'pip install comet_ml'"),
    # YOLOv5's "TensorBoard: Start with 'tensorboard --logdir ...'": the metrics and plots are in the MLflow run.
    ("yolov5", r"^TensorBoard: Start with 'tensorboard --logdir "),
    # ultralytics' red "requirements: ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS detected, skipping requirements check.":
    # train.offline sets that switch on purpose (no pip installs at run time); red text reads as an error.
    ("ultralytics", r"^requirements: ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS detected, skipping requirements check"),
    # ultralytics' "Creating new Ultralytics Settings ... file, view/update with 'yolo settings'": once per cache dir,
    # in the recipe's own config folder (train.offline); the `yolo` CLI and its settings are not used here.
    ("ultralytics", r"^Creating new Ultralytics Settings v[\d.]+ file"),
    # matplotlib's "generated new fontManager" (INFO, shown by Hydra's logging setup): a cache built once per cache dir.
    ("matplotlib.font_manager", r"^generated new fontManager$"),
    # MLflow's advice against logging a Python object as `python_model` (CloudPickle), at the end of every tracked
    # run: the detector is logged that way on purpose, with its code (train/model) packaged beside it.
    ("mlflow.pyfunc", r"^Passing a Python object as `python_model` causes it to be serialized using CloudPickle"),
    # MLflow's system-metrics monitor announcing its start and stop, and that a CPU machine has no GPU to sample, at
    # every tracked run (INFO): the series are in the run (mlflow.system_metrics; docs/tracking.md).
    ("mlflow.system_metrics.system_metrics_monitor", r"^(Started monitoring system metrics|Stopping system metrics "
                                                     r"monitoring|Successfully terminated system metrics monitoring)"),
    ("mlflow.system_metrics.system_metrics_monitor", r"^Skip logging GPU metrics"),
    # "Validating input example against model signature" (INFO) at every logged model: a check, not news.
    ("mlflow.pyfunc", r"^Validating input example against model signature"),
)


class DropMessage(logging.Filter):
    """Drops a logger's records whose plain text (escape sequences stripped) matches `pattern`."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern: Pattern[str] = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is shown (and fails) as it would have without us
            return True
        return not self.pattern.search(_ANSI.sub("", text))


def silence() -> None:
    for action, message, category, module in WARNINGS:
        warnings.filterwarnings(action, message=message, category=category, module=module)  # dedupes itself
    for name, pattern in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(DropMessage(pattern))


def undo_yolov5_global_warning_settings() -> None:
    """What importing YOLOv5 does to every warning of the process, undone: call right after `import yolov5.train`.

    yolov5/utils/torch_utils.py installs `warnings.filterwarnings('ignore', category=UserWarning)`: every
    UserWarning of every library (and ours) hidden for the rest of the process. roboflow (imported by yolov5)
    replaces warnings.formatwarning with one that prints the bare message: no file, line or category.
    """
    blanket = ("ignore", None, UserWarning, None, 0)
    if blanket in warnings.filters:
        warnings.filters[:] = [f for f in warnings.filters if f != blanket]
        warnings._filters_mutated()  # type: ignore[attr-defined]  # the C cache of the filters is rebuilt
    if getattr(warnings.formatwarning, "__module__", "") == "roboflow.core.project":
        warnings.formatwarning = _STDLIB_FORMATWARNING


_STDLIB_FORMATWARNING = getattr(warnings, "_formatwarning_orig", warnings.formatwarning)  # as Python defines it
