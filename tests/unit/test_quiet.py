"""train.quiet: each known piece of console noise is filtered; anything else from the same place still shows."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from train import quiet

BLUE_BOLD, RESET = "\x1b[34m\x1b[1m", "\x1b[0m"


def _shown(message: str, category: type, module: str) -> bool:
    """Whether a warning as `module` would raise it reaches the user, with quiet's filters and Python's defaults."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")  # below quiet's filters: what they let through is recorded every time
        quiet.silence()
        warnings.warn_explicit(message, category, f"/site-packages/{module.replace('.', '/')}.py", 1, module=module)
    return bool(caught)


PKG_RESOURCES = ("pkg_resources is deprecated as an API. See https://setuptools.pypa.io/en/latest/pkg_resources.html. "
                 "The pkg_resources package is slated for removal as early as 2025-11-30. Refrain from using this "
                 "package or pin to Setuptools<81.")
WEIGHTS_ONLY = ("Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected, since the`weights_only` argument was "
                "not explicitly passed to `torch.load`, forcing weights_only=False.")
PIN_MEMORY = ("'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be "
              "used.")
AUTOCAST = ("`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', args...)` "
            "instead.")
GRAD_SCALER = ("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` "
               "instead.")


@pytest.mark.parametrize("message, category, module", [
    (PKG_RESOURCES, UserWarning, "yolov5.utils.general"),
    (GRAD_SCALER, FutureWarning, "yolov5.train"),
    (AUTOCAST, FutureWarning, "yolov5.train"),
    (WEIGHTS_ONLY, UserWarning, "yolov5.utils.general"),
    (WEIGHTS_ONLY, UserWarning, "yolov5.models.experimental"),
    (PIN_MEMORY, UserWarning, "torch.utils.data.dataloader"),
])
def test_known_warnings_are_silenced_and_others_from_the_same_module_still_show(message, category, module):
    assert not _shown(message, category, module)
    assert _shown("something else is deprecated", category, module)
    assert _shown(message, category, "our.own.code")  # the same words from elsewhere: not the known case


def test_the_real_grad_scaler_deprecation_is_silenced_where_yolov5_calls_it():
    torch = pytest.importorskip("torch")
    call = compile("torch.cuda.amp.GradScaler(enabled=False)", "/site-packages/yolov5/train.py", "exec")
    for module, expected in (("yolov5.train", 0), ("our.own.code", 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("always")
            quiet.silence()
            exec(call, {"__name__": module, "torch": torch})
        assert len([w for w in caught if "GradScaler" in str(w.message)]) == expected, module


def test_the_real_pkg_resources_deprecation_is_silenced_for_yolov5():
    probe = ("import warnings; warnings.simplefilter('always'); from train import quiet; quiet.silence(); "
             "exec('import pkg_resources', {'__name__': 'yolov5.utils.general'}); print('imported')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "imported\n" and "pkg_resources" not in proc.stderr, proc.stderr


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged():
    """logged(logger_name, message, level) -> whether the record reached the logger's handlers."""
    quiet.silence()
    quiet.silence()  # twice, as every trial of a sweep does: still one filter each
    handler = _Records()
    touched = []

    def log(name: str, message: str, level: int = logging.INFO) -> bool:
        logger = logging.getLogger(name)
        if logger not in [t[0] for t in touched]:
            touched.append((logger, logger.level, logger.disabled))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
        handler.messages.clear()
        logger.log(level, message)
        # endswith: once ultralytics is imported, its handler prefixes WARNING records in place ("WARNING ⚠️ ...")
        return len(handler.messages) == 1 and handler.messages[0].endswith(message)

    yield log
    for logger, level, disabled in touched:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def test_each_logger_has_one_filter_per_silenced_message():
    quiet.silence()
    quiet.silence()
    for name, pattern in quiet.LOG_RECORDS:
        assert [f.pattern.pattern for f in logging.getLogger(name).filters
                if isinstance(f, quiet.DropMessage)].count(pattern) == 1


@pytest.mark.parametrize("name, noise, kept", [
    ("yolov5", f"{BLUE_BOLD}ClearML: {RESET}run 'pip install clearml' to automatically track, visualize and remotely "
               "train YOLOv5 \U0001f680 in ClearML", f"{BLUE_BOLD}optimizer:{RESET} AdamW(lr=0.002)"),
    ("yolov5", f"{BLUE_BOLD}Comet: {RESET}run 'pip install comet_ml' to automatically track and visualize YOLOv5 "
               "\U0001f680 runs in Comet", "WARNING \u26a0\ufe0f comet_ml is installed but not configured"),
    ("yolov5", f"{BLUE_BOLD}TensorBoard: {RESET}Start with 'tensorboard --logdir /tmp/outputs/x', view at "
               "http://localhost:6006/", f"{BLUE_BOLD}TensorBoard: {RESET}Failed to write the event file"),
    ("ultralytics", "\x1b[31m\x1b[1mrequirements:\x1b[0m ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS detected, skipping "
                    "requirements check.", "\x1b[31m\x1b[1mrequirements:\x1b[0m numpy<2 not found"),
    ("ultralytics", "Creating new Ultralytics Settings v0.0.8 file \u2705 \nView Ultralytics Settings with 'yolo "
                    "settings' or at '/tmp/cache/config/Ultralytics/settings.json'",
     "WARNING \u26a0\ufe0f Ultralytics settings reset to default values"),
    ("matplotlib.font_manager", "generated new fontManager", "findfont: Font family 'Arial' not found."),
    ("mlflow.pyfunc", "Passing a Python object as `python_model` causes it to be serialized using CloudPickle, it "
                      "requires exercising caution as Python object serialization mechanisms may execute arbitrary "
                      "code during deserialization.Consider using a file path (str or Path) instead. See "
                      "https://mlflow.org/docs/latest/ml/model/models-from-code/ for details.",
     "The following failures occurred while performing one or more logging operations"),
])
def test_known_log_records_are_dropped_and_others_from_the_same_logger_still_show(logged, name, noise, kept):
    assert not logged(name, noise)
    assert logged(name, kept, logging.WARNING)


def test_the_filters_are_on_the_named_loggers_only(logged):
    assert logged("our.own.code", "Passing a Python object as `python_model` causes it to be serialized using "
                                  "CloudPickle")


def test_silence_runs_with_the_offline_switches(tmp_path):
    probe = ("import warnings; from pathlib import Path; from train import offline; offline.apply(Path(%r)); "
             "print(any(f[2] is FutureWarning and f[1] and 'GradScaler' in f[1].pattern for f in warnings.filters))"
             % str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "True\n", proc.stderr


def test_what_importing_yolov5_does_to_every_warning_can_be_undone():
    def roboflow_format(message, *args, **kwargs):  # roboflow/core/project.py's: the bare message
        return str(message) + "\n"

    roboflow_format.__module__ = "roboflow.core.project"
    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("always")
            quiet.silence()
            warnings.filterwarnings("ignore", category=UserWarning)  # yolov5/utils/torch_utils.py, at import
            warnings.formatwarning = roboflow_format
            warnings.warn_explicit("hidden", UserWarning, "x.py", 1, module="our.own.code")
            quiet.undo_yolov5_global_warning_settings()
            quiet.undo_yolov5_global_warning_settings()
            warnings.warn_explicit("a real warning", UserWarning, "x.py", 2, module="our.own.code")
            warnings.warn_explicit(WEIGHTS_ONLY, UserWarning, "general.py", 3, module="yolov5.utils.general")
        assert [str(w.message) for w in caught] == ["a real warning"]
        assert warnings.formatwarning is not roboflow_format
        assert warnings.formatwarning("m", UserWarning, "x.py", 2).startswith("x.py:2: UserWarning: m")
    finally:
        warnings.formatwarning = formatwarning
